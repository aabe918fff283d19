"""What every xmodal trainer (supervised and GRPO) adds to its HF Trainer base for runs that survive interruptions:
strict resume of the weights (xmodal.trainers.lifecycle.resume), no step past `max_steps` on resume, and preemption on SIGTERM/SIGINT
(xmodal.trainers.lifecycle.preemption)."""

from __future__ import annotations

import logging

from xmodal.trainers.lifecycle.preemption import (
    PREEMPTED_EXIT_CODE,
    PreemptionCallback,
    TrainingPreempted,
    write_preempted_marker,
)
from xmodal.trainers.lifecycle.resume import is_peft_model, load_full_weights, verify_checkpoint_weights

logger = logging.getLogger(__name__)


class ResilientTrainingMixin:
    """Mix in before the `transformers.Trainer` subclass: `class MyTrainer(ResilientTrainingMixin, Trainer)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.preemption = PreemptionCallback()
        self.add_callback(self.preemption)

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        if resume_from_checkpoint:
            # Every path, DeepSpeed included (it restores a PEFT model non-strictly): a checkpoint of another model
            # or finetune setting stops the run instead of training on from partly base weights.
            verify_checkpoint_weights(self.model, resume_from_checkpoint)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        checkpoint = self.preemption.checkpoint(self.args.output_dir)
        if checkpoint is not None:
            # Release the DeepSpeed engine while the process group exists (as the recipe does after saving).
            self.accelerator.free_memory()
            if self.is_world_process_zero():
                write_preempted_marker(self.args.output_dir, self.state.global_step, checkpoint)
                logger.warning(
                    "preempted: %s written; continue with resume=auto (exit status %d)", checkpoint, PREEMPTED_EXIT_CODE
                )
            raise TrainingPreempted(checkpoint)
        return output

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Non-DeepSpeed resume: full weights by their saved names (xmodal.trainers.lifecycle.resume); PEFT adapters as the Trainer does."""
        model = self.model if model is None else model
        if is_peft_model(model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        else:
            load_full_weights(model, resume_from_checkpoint)

    def _save_checkpoint(self, model, trial):
        # The Trainer deletes checkpoints beyond save_total_limit at the end of this call, before any completion
        # marker exists: a kill right then would leave no checkpoint to resume from. CheckpointCompletionCallback
        # deletes them instead, once the new checkpoint is marked complete.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # A resume from a checkpoint at max_steps (a run killed while saving final/) would otherwise train one
        # step past it: the Trainer only checks max_steps after a step. No batches: no step.
        if self.state.max_steps and self.state.global_step >= self.state.max_steps:
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)
