"""`LossContext`: what every loss term sees, plus the cached views of the labelled target tokens.

Target tokens are shifted once, here: the logits at position p predict the label at position p + 1, so
a target is any `labels[:, 1:] != -100` entry and its prediction position is the same index into
`logits[:, :-1]`. Every term reads targets through these helpers, so no term shifts labels itself.

Targets are flattened in row-major order. In a paired batch (rows [0, B) student, [B, 2B) teacher, see
docs/design.md) the student block's targets therefore come first, and because both rows of a pair hold
the same target tokens, the k-th student target and the k-th teacher target are the same token of the
same response: ranks align the two views whatever each branch's prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from xmodal.core.tokens import IGNORE_INDEX

STUDENT, TEACHER = 0, 1
BRANCH_CHOICES = ("student", "teacher", "both")


def target_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, prediction position) of every labelled target, row-major; position indexes `logits[:, :-1]`."""
    rows, positions = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows, positions


def target_logprobs(logits_at_targets: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) per row of `[M, V]` logits, in float32, without materialising a log-softmax.

    log p = logit[token] - logsumexp(logits): one reduction and one gather instead of an `[M, V]` output.
    """
    logits = logits_at_targets.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


@dataclass
class LossContext:
    """Everything a loss term may read for one micro-batch (see docs/design.md, "Losses").

    `batch` holds the model inputs plus `labels` and, for paired batches, `branch`; `outputs` is the
    model output of one forward over the whole batch (`.logits`, optional `.hidden_states`);
    `num_items_in_batch` is the number of target tokens (`labels[:, 1:] != -100`) in the global batch
    over the whole gradient-accumulation window, as HF `Trainer` counts it, or None.

    `logits_at_targets`: True when the trainer computed logits only at the targets' prediction positions
    (`outputs.logits` is `[M, V]` in `target_index` order, see `xmodal.losses.selective`), False when they cover
    every position (`[N, T, V]`). Terms read logits through `target_logits` / `target_logprobs`, which
    serve both; a term that needs `ctx.logits` at every position sets `needs_full_logits = True`.
    """

    model: torch.nn.Module
    batch: dict[str, Any]
    outputs: Any
    num_items_in_batch: torch.Tensor | int | None = None
    global_step: int = 0
    logits_at_targets: bool = False

    @property
    def labels(self) -> torch.Tensor:
        return self.batch["labels"]

    @property
    def logits(self) -> torch.Tensor:
        """`[N, T, V]` logits at every position; only when the trainer computed them all (see the class doc)."""
        if self.logits_at_targets:
            raise ValueError(
                "the logits were computed at the target positions only (read `ctx.target_logits`); a loss term "
                "that needs every position must set `needs_full_logits = True`"
            )
        return self.outputs.logits

    # -- targets of the whole batch -------------------------------------------------------------
    @cached_property
    def target_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        return target_positions(self.labels)

    @cached_property
    def target_tokens(self) -> torch.Tensor:
        rows, positions = self.target_index
        return self.labels[rows, positions + 1]

    @cached_property
    def target_logits(self) -> torch.Tensor:
        """`[M, V]` logits at the prediction positions of the M targets (gradient flows)."""
        if self.logits_at_targets:
            return self.outputs.logits
        rows, positions = self.target_index
        return self.logits[rows, positions]

    @cached_property
    def target_logprobs(self) -> torch.Tensor:
        """`[M]` float32 log-probability of each target token (gradient flows)."""
        return target_logprobs(self.target_logits, self.target_tokens)

    @cached_property
    def target_mask(self) -> torch.Tensor:
        """`[N, T - 1]` bool, True at prediction positions whose next token is a target."""
        return self.labels[:, 1:] != IGNORE_INDEX

    # -- paired batches ---------------------------------------------------------------------------
    @property
    def is_paired(self) -> bool:
        return self.batch.get("branch") is not None

    @cached_property
    def num_pairs(self) -> int:
        """B, the number of student (and of teacher) rows; validates the paired layout once."""
        branch = self.batch["branch"]
        num_pairs = branch.numel() // 2
        expected = torch.tensor([STUDENT] * num_pairs + [TEACHER] * num_pairs, device=branch.device)
        if branch.numel() % 2 or not torch.equal(branch.long(), expected):
            raise ValueError(
                f"paired batch needs `branch` = [0]*B + [1]*B (student rows, then teacher rows), got {branch.tolist()}"
            )
        self._check_pairs_share_targets(num_pairs)
        return num_pairs

    def _check_pairs_share_targets(self, num_pairs: int) -> None:
        # Rank alignment and the halving of `num_items_in_batch` both rest on this invariant; a collator
        # that truncated one branch's response would otherwise be silently mis-aligned.
        counts = self.target_mask.sum(dim=1)
        differing = (counts[:num_pairs] != counts[num_pairs:]).nonzero().flatten()
        if differing.numel() == 0:
            split = int(counts[:num_pairs].sum())
            tokens, student_rows = self.target_tokens, self.target_index[0][:split]
            differing = student_rows[tokens[:split] != tokens[split:]].unique()
        if differing.numel():
            raise ValueError(
                f"paired rows must carry the same target tokens in the same order; pairs {differing.tolist()} "
                "differ (was one branch truncated?)"
            )

    @cached_property
    def num_student_targets(self) -> int:
        return int(self.target_mask[: self.num_pairs].sum())

    def branch_targets(self, branch: str) -> slice:
        """Slice of the flattened targets (`target_logprobs`, `target_logits`, ...) that belong to `branch`."""
        if branch not in BRANCH_CHOICES:
            raise ValueError(f"branch must be one of {BRANCH_CHOICES}, got {branch!r}")
        if not self.is_paired or branch == "both":
            return slice(None)
        split = self.num_student_targets
        return slice(None, split) if branch == "student" else slice(split, None)

    # -- normalisation --------------------------------------------------------------------------
    def target_normalizer(self, branch: str) -> torch.Tensor | int:
        """Denominator for a SUM over the targets of `branch` (student | teacher | both).

        With `num_items_in_batch` (targets of all rows over the global batch and accumulation window) a
        sum divided by it adds up over micro-batches to the global token mean, whatever the accumulation
        split. A single branch of a paired batch holds exactly half of those targets, because paired rows
        share their targets (checked in `num_pairs`), so its global count is `num_items_in_batch / 2`:
        exact and split-invariant, unlike a per-micro-batch rescaling. Without `num_items_in_batch` the
        denominator is this micro-batch's own count of the branch's targets (a plain mean).
        """
        selected = self.branch_targets(branch)
        one_branch = self.is_paired and branch != "both"
        if self.num_items_in_batch is not None:
            return self.num_items_in_batch / 2 if one_branch else self.num_items_in_batch
        return max(self.target_logprobs[selected].numel(), 1)
