"""Non-finite loss terms never update the weights silently: stop the run (`raise`) or drop the step (`skip`).

`on_nonfinite_loss: raise` (the default) stops at the first micro-batch whose loss term is NaN/inf, naming the
optimizer step and the term. `skip` lets the step's backward passes run (so every rank keeps issuing the same
collectives), then drops the update: the gradients are set to None before `optimizer.step()`, which torch
optimizers read as "no gradient": no weight changes and no optimizer state (moments, step counts) is touched.
The step still counts (global step, data position and learning-rate schedule advance, as with a skipped AMP
step), every rank skips it when any rank saw a non-finite term, `skipped_steps` (the run's total) is logged, and
`max_skipped_steps` skips in a row stop the run.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from xmodal.core.errors import ConfigError

logger = logging.getLogger(__name__)
NONFINITE_CHOICES = ("raise", "skip")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss term (`raise`), or too many steps in a row did (`skip`)."""


class NonFiniteLossGuard(TrainerCallback):
    """Watches each micro-batch's loss terms (`observe`) and applies the policy before each optimizer step."""

    def __init__(self, action: str = "raise", max_skipped_steps: int = 5, uses_deepspeed: bool = False):
        if action not in NONFINITE_CHOICES:
            raise ConfigError(f"on_nonfinite_loss must be one of {NONFINITE_CHOICES}, got {action!r}")
        if max_skipped_steps < 1:
            raise ConfigError(f"max_skipped_steps must be at least 1, got {max_skipped_steps}")
        if action == "skip" and uses_deepspeed:
            # DeepSpeed steps its optimizer inside backward, from gradients it keeps in its own buffers.
            raise ConfigError("on_nonfinite_loss=skip does not work with DeepSpeed; use on_nonfinite_loss=raise")
        self.action = action
        self.max_skipped_steps = max_skipped_steps
        self.skipped_steps = 0
        self._skipped_in_a_row = 0
        self._nonfinite_terms: set[str] = set()

    def observe(self, terms: dict[str, torch.Tensor], step: int) -> bool:
        """Check one micro-batch's unweighted terms at optimizer step `step`; True when they are all finite."""
        bad = sorted(name for name, value in terms.items() if not torch.isfinite(value).all())
        if bad and self.action == "raise":
            raise NonFiniteLossError(
                f"optimizer step {step}: loss term {', '.join(repr(name) for name in bad)} is not finite "
                f"({', '.join(f'{name}={float(terms[name])}' for name in bad)}); on_nonfinite_loss=skip drops "
                "such steps instead"
            )
        self._nonfinite_terms.update(bad)
        return not bad

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.action != "skip":  # `raise` stopped the run in `observe` already
            return
        step = state.global_step + 1
        local = torch.tensor(float(bool(self._nonfinite_terms)), device=args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(local)  # one rank's NaN poisons every rank's averaged gradients
        terms, self._nonfinite_terms = sorted(self._nonfinite_terms), set()
        if not local.item():
            self._skipped_in_a_row = 0
            return
        model.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self._skipped_in_a_row += 1
        logger.warning("optimizer step %d skipped: non-finite loss term %s", step, ", ".join(terms) or "on another rank")
        if self._skipped_in_a_row >= self.max_skipped_steps:
            raise NonFiniteLossError(
                f"optimizer step {step}: {self._skipped_in_a_row} steps in a row skipped for non-finite loss terms "
                f"(max_skipped_steps={self.max_skipped_steps}); last: {', '.join(terms) or 'on another rank'}"
            )
