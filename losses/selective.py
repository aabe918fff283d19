"""Logits only where a loss reads them: the output head applied to the targets' prediction positions.

A causal LM's forward applies its output head (`lm_head`, hidden size -> vocabulary) to every position and
materialises `[rows, tokens, vocab]` logits; with a 152k vocabulary and 1-2k-token multimodal prompts that
tensor (and its gradient) dominates step time and memory, while the loss terms read it at the few answer
positions only. `forward_with_target_logits` runs the model through all its wrappers (DDP, DeepSpeed, PEFT),
so hooks and gradient synchronisation stay as they are, and swaps the head's input for the hidden states at
the targets' prediction positions: the returned `logits` are `[M, V]`, one row per target, row-major (the
order of `LossContext.target_index`). The head computes exactly those rows of the full-logits tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from xmodal.losses.base import target_positions


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The module that maps hidden states to vocabulary logits, under any DDP / DeepSpeed / PEFT wrapping."""
    while hasattr(model, "module"):  # DDP and DeepSpeed engines hold the model in `.module`
        model = model.module
    head = model.get_output_embeddings()  # PEFT forwards the call to the wrapped transformers model
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output head (`get_output_embeddings()` is None)")
    return head


@contextmanager
def head_at_positions(model: torch.nn.Module, rows: torch.Tensor, positions: torch.Tensor) -> Iterator[None]:
    """While open, the model's output head sees only `hidden[rows, positions]` of its `[N, T, D]` input."""
    head = output_head(model)

    def gather(module, args):
        hidden = args[0]
        if hidden.dim() != 3:
            raise ValueError(
                f"selective logits expect the output head to get [rows, tokens, hidden] states, got shape "
                f"{tuple(hidden.shape)}; compute full logits instead (a loss term with needs_full_logits = True)"
            )
        return (hidden[rows, positions], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def forward_with_target_logits(model: torch.nn.Module, inputs: dict[str, Any], labels: torch.Tensor, **kwargs) -> Any:
    """`model(**inputs, **kwargs)` whose `logits` are `[M, V]`: only at the prediction positions of `labels`' targets.

    `labels` are the `[N, T]` labels of the rows in `inputs` (not passed to the model). The forward must
    leave `logits_to_keep` at its default (every position), so that the head's input is `[N, T, D]`.
    """
    rows, positions = target_positions(labels)
    with head_at_positions(model, rows, positions):
        return model(**inputs, **kwargs)
