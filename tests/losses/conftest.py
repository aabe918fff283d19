"""Shared builders for the loss tests: hand-made batches and logits, no model."""

from types import SimpleNamespace

import pytest
import torch

IGNORE = -100


def _rows(layouts, length, vocab, generator):
    """input_ids/labels for rows laid out as (padding before, prompt length, response tokens)."""
    input_ids = torch.zeros(len(layouts), length, dtype=torch.long)
    labels = torch.full((len(layouts), length), IGNORE)
    for row, (offset, prompt_length, response) in enumerate(layouts):
        prompt = torch.randint(1, vocab, (prompt_length,), generator=generator)
        tokens = torch.cat([prompt, torch.tensor(response)])
        input_ids[row, offset : offset + len(tokens)] = tokens
        labels[row, offset + prompt_length : offset + len(tokens)] = torch.tensor(response)
    return input_ids, labels


@pytest.fixture
def make_batch():
    """Build (batch, outputs) with random logits; `pairs` adds the student/teacher `branch` layout.

    `layouts` lists rows as (left padding, prompt length, response token ids); for a paired batch give the
    student rows first, then the teacher rows, with the same responses in the same order.
    """

    def build(layouts, *, paired, length=16, vocab=11, hidden_size=0, seed=0):
        generator = torch.Generator().manual_seed(seed)
        input_ids, labels = _rows(layouts, length, vocab, generator)
        batch = {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "labels": labels}
        if paired:
            pairs = len(layouts) // 2
            batch["branch"] = torch.tensor([0] * pairs + [1] * pairs)
        logits = torch.randn(len(layouts), length, vocab, generator=generator, dtype=torch.float64)
        outputs = SimpleNamespace(logits=logits.float().requires_grad_())
        if hidden_size:
            states = [torch.randn(len(layouts), length, hidden_size, generator=generator) for _ in range(3)]
            outputs.hidden_states = tuple(state.requires_grad_() for state in states)
        return batch, outputs

    return build


# Two pairs whose branches have different prompt lengths and paddings; responses of 3 and 2 tokens.
PAIRED_LAYOUTS = [
    (0, 3, [4, 7, 2]),  # student, pair 0
    (2, 5, [9, 1]),  # student, pair 1 (left-padded)
    (1, 8, [4, 7, 2]),  # teacher, pair 0: longer prompt (facts as text)
    (0, 6, [9, 1]),  # teacher, pair 1
]


@pytest.fixture
def paired_layouts():
    return list(PAIRED_LAYOUTS)
