"""Checkpoint directories of a run: which are complete, which to resume from, which to delete."""

from __future__ import annotations

import logging
import os
import re
import shutil

from xmodal.core.errors import ConfigError

logger = logging.getLogger(__name__)
COMPLETE_MARKER = "xmodal_checkpoint_complete"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


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
    """`resume` is false, true (newest complete checkpoint in output_dir), auto (that checkpoint if there is one,
    else a fresh start: one command for a job's first start and its requeued starts) or a checkpoint path."""
    if resume in (False, None, "false", "False"):
        return None
    if resume == "auto":
        return latest_complete_checkpoint(output_dir)
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
