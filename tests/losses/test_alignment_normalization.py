"""`rl.align.normalize`: the RL alignment term's normaliser over an accumulation window, on hand-computed numbers.

One rank, two micro-batches per optimizer step (gradient accumulation 2, one generation batch per step). With k1 and
no clamp each token's estimate is d = teacher - student, so the numbers below are sums of the teacher values.
"""

from __future__ import annotations

import math

import pytest
import torch

from xmodal.losses.alignment import RolloutAlignment, rollout_alignment_loss, rollout_alignment_sum

STUDENT = torch.zeros(2, 3)
# micro-batch A: aligned tokens 1, 2, 3 | 4 (sum 10 over 4 tokens); micro-batch B: aligned token 6 (sum 6 over 1)
MICRO_BATCHES = [
    (torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]]), torch.tensor([[1, 1, 1], [1, 0, 0]])),
    (torch.tensor([[6.0, 9.0, 9.0], [9.0, 9.0, 9.0]]), torch.tensor([[1, 0, 0], [0, 0, 0]])),
]
ACCUMULATION = 2
WINDOW_TOKENS = torch.tensor(5.0)  # aligned tokens of the window on this rank: 4 + 1


def window_terms(normalize: str) -> list[float]:
    alignment = RolloutAlignment(estimator="k1", clamp=False, normalize=normalize)
    return [
        rollout_alignment_loss(
            rollout_alignment_sum(STUDENT, teacher, mask, alignment), mask.sum(), normalize,
            accumulation_steps=ACCUMULATION, tokens_per_window=WINDOW_TOKENS,
        ).item()
        for teacher, mask in MICRO_BATCHES
    ]


def test_release_is_each_micro_batch_token_mean_over_the_accumulation_steps():
    # A: 10 / 4 / 2 = 1.25; B: 6 / 1 / 2 = 3; the step's gradient is that of (2.5 + 6) / 2
    assert window_terms("release") == pytest.approx([1.25, 3.0])
    assert sum(window_terms("release")) == pytest.approx(4.25)


def test_global_is_one_token_mean_over_the_window():
    # A: 10 / 5 = 2; B: 6 / 5 = 1.2; together (10 + 6) / 5 = 3.2, the mean over all five aligned tokens
    assert window_terms("global") == pytest.approx([2.0, 1.2])
    assert sum(window_terms("global")) == pytest.approx(3.2)


def test_release_k3_with_the_released_clamps_and_a_micro_batch_without_aligned_tokens():
    alignment = RolloutAlignment()  # k3, clamped, release: the defaults
    teacher = torch.tensor([[math.log(2.0), 30.0]])  # d = ln 2: k3 = 2 - ln 2 - 1; d = 30: clamped to the bound 10
    mask = torch.ones(1, 2)
    summed = rollout_alignment_sum(torch.zeros(1, 2), teacher, mask, alignment)
    loss = rollout_alignment_loss(summed, mask.sum(), "release", accumulation_steps=4, tokens_per_window=WINDOW_TOKENS)
    assert loss.item() == pytest.approx(((1 - math.log(2.0)) + 10.0) / 2 / 4)
    empty = torch.zeros(1, 2)
    nothing = rollout_alignment_sum(torch.zeros(1, 2), teacher, empty, alignment)
    assert rollout_alignment_loss(nothing, empty.sum(), "release", accumulation_steps=4, tokens_per_window=WINDOW_TOKENS).item() == 0.0

