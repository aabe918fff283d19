"""Preemption: SIGTERM, SIGINT or SIGUSR1 ends a run at the next step boundary with a complete checkpoint, resumable.

The signal handler only records the request; the optimizer step in flight finishes. At the end of each step the
ranks agree (one all-reduce: a signal on any rank stops all of them at the same step), the Trainer writes
`checkpoint-<step>` (with its completion marker) and stops, and the recipe exits with `PREEMPTED_EXIT_CODE`
instead of saving `final/`. `resume=true` (or `resume=auto`) continues from that checkpoint. Further signals while
stopping are ignored, so a launcher that relays a Ctrl-C as SIGTERM does not kill a rank mid-save.

Before exiting, rank 0 writes `<output_dir>/PREEMPTED` (the step and checkpoint, atomically): a batch script sees
the preemption there whatever exit status its launcher reports (torchrun exits 1 for a worker's 75), and requeues
(scripts/slurm/). SIGUSR1 is there for schedulers: torchrun does not handle it, so a `--signal=USR1@<lead>`
reaches the ranks directly instead of through torchrun, which would kill them 30 s after relaying a SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal

import torch
from transformers import TrainerCallback

from xmodal.core.atomic import atomic_write_text

logger = logging.getLogger(__name__)

# EX_TEMPFAIL from sysexits.h: "temporary failure, try again later" - resume the run with resume=true.
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
PREEMPTED_MARKER = "PREEMPTED"  # in output_dir while the run's last start ended preempted


class TrainingPreempted(SystemExit):
    """Raised once the preemption checkpoint is written; exits the process with `PREEMPTED_EXIT_CODE`."""

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint
        super().__init__(PREEMPTED_EXIT_CODE)


class PreemptionCallback(TrainerCallback):
    """Turns SIGTERM/SIGINT during `train()` into a checkpoint at the end of the current optimizer step."""

    def __init__(self):
        self.requested_by: int | None = None  # the signal received on this rank
        self.stopped_at_step: int | None = None  # set on every rank once they agreed to stop
        self._previous_handlers: dict[int, object] = {}

    def _request(self, signum, frame) -> None:
        if self.requested_by is None:
            logger.warning(
                "%s received: finishing the current optimizer step, then saving a checkpoint and exiting (%d)",
                signal.Signals(signum).name,
                PREEMPTED_EXIT_CODE,
            )
        self.requested_by = signum

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous_handlers = {signum: signal.signal(signum, self._request) for signum in PREEMPTION_SIGNALS}

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_step_end(self, args, state, control, **kwargs):
        requested = torch.tensor(float(self.requested_by is not None), device=args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(requested, op=torch.distributed.ReduceOp.MAX)
        if requested.item() and state.global_step < state.max_steps:
            self.stopped_at_step = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def checkpoint(self, output_dir: str) -> str | None:
        """The preemption checkpoint's directory, once training stopped for a signal."""
        if self.stopped_at_step is None:
            return None
        return os.path.join(output_dir, f"checkpoint-{self.stopped_at_step}")


def write_preempted_marker(output_dir: str, step: int, checkpoint: str) -> None:
    """`<output_dir>/PREEMPTED`: `{"step": N, "checkpoint": ".../checkpoint-N"}`, written whole or not at all."""
    record = {"step": step, "checkpoint": os.path.abspath(checkpoint)}
    atomic_write_text(os.path.join(output_dir, PREEMPTED_MARKER), json.dumps(record) + "\n")
