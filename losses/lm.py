"""The causal-LM cross-entropy on labelled (assistant) tokens."""

from __future__ import annotations

import torch

from xmodal.losses.base import BRANCH_CHOICES, LossContext


class LMLoss:
    """Token-level cross-entropy: -sum log p(target) / `ctx.target_normalizer(branches)`.

    With `num_items_in_batch` this is the sum over this micro-batch's targets divided by the target count
    of the global batch and accumulation window, so the micro-batch losses add up to the global token mean
    whatever the split. `branches` picks the rows of a paired batch that are trained (student, teacher or
    both); a single branch divides by its own global count, half of `num_items_in_batch` (see
    `LossContext.target_normalizer`), so it stays a token mean over that branch. Unpaired batches train
    every row.
    """

    def __init__(self, branches: str = "both"):
        if branches not in BRANCH_CHOICES:
            raise ValueError(f"lm: branches must be one of {BRANCH_CHOICES}, got {branches!r}")
        self.branches = branches

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        selected = ctx.target_logprobs[ctx.branch_targets(self.branches)]
        return -selected.sum() / ctx.target_normalizer(self.branches)
