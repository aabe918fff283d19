"""The run directory's callbacks: metrics.jsonl lines and checkpoint completion markers, both crash-safe."""

from __future__ import annotations

import json
import logging
import math
import os

from transformers import TrainerCallback

from xmodal.core.atomic import append_jsonl, atomic_write_text
from xmodal.core.distributed import barrier

from xmodal.trainers.lifecycle.checkpoints import COMPLETE_MARKER, delete_old_checkpoints

logger = logging.getLogger(__name__)


class MetricsFileCallback(TrainerCallback):
    """Appends every log event's scalars to `<output_dir>/metrics.jsonl` as one JSON object with its `step`.

    A resumed run first drops the rows past its checkpoint's step (written by the run that died after it), so
    the file holds every step once; a line cut short by a crash is dropped with them.
    """

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, "metrics.jsonl")

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step > 0 and os.path.exists(self.path):
            drop_rows_after(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        scalars = {
            key: value
            for key, value in logs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        }
        if scalars:
            append_jsonl(self.path, {"step": state.global_step, **scalars})


def drop_rows_after(path: str, step: int) -> None:
    """Rewrite a metrics.jsonl atomically without its rows past `step`, the end-of-training summary at `step`,
    and any line that is not whole JSON."""
    kept = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: dropping a partly written line %r", path, line[:80])
                continue
            # The end-of-training summary of a run that finished before it died is written again by this one.
            if row.get("step", 0) < step or (row.get("step") == step and "train_runtime" not in row):
                kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(kept))


class CheckpointCompletionCallback(TrainerCallback):
    """Marks a checkpoint complete once every rank has written its part, then deletes the checkpoints beyond
    `save_total_limit` (with ResilientTrainingMixin, which keeps the Trainer from deleting them earlier).

    HF `Trainer` writes `checkpoint-N/` in place; a crash mid-save leaves a directory that looks like a
    checkpoint. Resume only trusts checkpoints with the marker (see `latest_complete_checkpoint`), so older
    checkpoints go only once a newer one is complete.
    """

    def on_save(self, args, state, control, **kwargs):
        barrier()
        if state.is_world_process_zero:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            atomic_write_text(os.path.join(path, COMPLETE_MARKER), f"{state.global_step}\n")
            delete_old_checkpoints(args.output_dir, args.save_total_limit, keep=state.best_model_checkpoint)
        barrier()
