"""Checkpoints beyond save_total_limit are deleted only after a newer checkpoint is marked complete, so a kill at
any moment leaves a complete checkpoint to resume from (the Trainer itself deletes them before the marker exists)."""

from __future__ import annotations

import os

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from xmodal.trainers.lifecycle.callbacks import CheckpointCompletionCallback
from xmodal.trainers.lifecycle.checkpoints import COMPLETE_MARKER, delete_old_checkpoints
from xmodal.trainers.lifecycle.resilience import ResilientTrainingMixin


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)}


class ResilientTrainer(ResilientTrainingMixin, Trainer):
    pass


class CompleteCheckpointsAtSave(TrainerCallback):
    """Runs before the completion callback: what a kill at the start of on_save would leave behind."""

    def __init__(self):
        self.seen: list[list[str]] = []

    def on_save(self, args, state, control, **kwargs):
        self.seen.append(sorted(
            name for name in os.listdir(args.output_dir)
            if name.startswith("checkpoint-") and os.path.exists(os.path.join(args.output_dir, name, COMPLETE_MARKER))
        ))


def test_the_previous_checkpoint_survives_until_the_new_one_is_complete(tmp_path):
    data = [{"x": torch.randn(2), "y": torch.randn(())} for _ in range(8)]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, save_steps=1, save_total_limit=1, per_device_train_batch_size=2,
        report_to=[], use_cpu=True, logging_steps=1, disable_tqdm=True,
    )
    spy = CompleteCheckpointsAtSave()
    trainer = ResilientTrainer(model=Regression(), args=args, train_dataset=data,
                               callbacks=[spy, CheckpointCompletionCallback()])
    trainer.train()
    # at each save, the previous complete checkpoint is still there (the Trainer would have deleted it already)
    assert spy.seen == [[], ["checkpoint-1"], ["checkpoint-2"]]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3"]  # and the limit holds once the new one is complete
    assert args.save_total_limit == 1


def test_delete_old_checkpoints_keeps_the_newest_complete_and_anything_newer(tmp_path):
    for step, complete in ((2, True), (4, False), (6, True), (8, True), (10, False)):
        os.makedirs(tmp_path / f"checkpoint-{step}")
        if complete:
            (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).write_text(f"{step}\n")
    delete_old_checkpoints(str(tmp_path), None)
    assert len(os.listdir(tmp_path)) == 5  # no limit: the Trainer's convention, keep everything
    delete_old_checkpoints(str(tmp_path), 1, keep=str(tmp_path / "checkpoint-2"))
    # checkpoint-10 is being written (no marker yet): it stays, and so does checkpoint-8 until it is complete
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-10", "checkpoint-2", "checkpoint-8"]
