"""Run-directory callbacks: metrics.jsonl lines and checkpoint completion markers, both crash-safe."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil

from transformers import TrainerCallback

from data_builders.atomic import append_jsonl, atomic_write_text
from data_builders.errors import ConfigError
from trainers.distributed import barrier

logger = logging.getLogger(__name__)
COMPLETE_MARKER = "xmodal_checkpoint_complete"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


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


def delete_old_checkpoints(output_dir: str, limit: int | None, keep: str | None = None) -> None:
    """Keep the newest `limit` complete checkpoints (and `keep`); older ones go, incomplete ones older than the
    newest complete one too (left by a crash mid-save). `limit` None or 0: keep everything, as the Trainer does."""
    if not limit:
        return
    checkpoints = sorted(
        (int(match.group(1)), os.path.join(output_dir, name))
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT_NAME.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    complete = [(step, path) for step, path in checkpoints if os.path.exists(os.path.join(path, COMPLETE_MARKER))]
    if not complete:
        return
    kept = {os.path.abspath(path) for _, path in complete[-limit:]} | ({os.path.abspath(keep)} if keep else set())
    newest_complete_step = complete[-1][0]
    for step, path in checkpoints:
        if step < newest_complete_step and os.path.abspath(path) not in kept:
            shutil.rmtree(path, ignore_errors=True)


def latest_complete_checkpoint(output_dir: str) -> str | None:
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_NAME.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            if os.path.exists(os.path.join(output_dir, name, COMPLETE_MARKER)):
                steps.append(int(match.group(1)))
            else:
                logger.warning("ignoring incomplete checkpoint %s (no completion marker)", name)
    return os.path.join(output_dir, f"checkpoint-{max(steps)}") if steps else None


def resolve_resume(resume, output_dir: str) -> str | None:
    """`resume` is false, true (newest complete checkpoint in output_dir) or a checkpoint path."""
    if resume in (False, None, "false", "False"):
        return None
    if resume in (True, "true", "True"):
        checkpoint = latest_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(
                f"resume=true but {output_dir} holds no complete checkpoint (checkpoint-N/ with {COMPLETE_MARKER}): "
                "start the run without resume=true (adding overwrite=true if an interrupted run left files there), "
                "or pass resume=<checkpoint directory>"
            )
        return checkpoint
    if not os.path.isdir(str(resume)):
        raise ConfigError(f"resume={resume!r} is not a checkpoint directory")
    return str(resume)
