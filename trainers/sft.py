"""`XModalSFTTrainer`: HF `Trainer` whose loss is a weighted sum of registered terms, each logged on its own."""

from __future__ import annotations

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer

from xmodal.losses.base import LossContext
from xmodal.losses.registry import LossComposer
from xmodal.losses.selective import forward_with_target_logits
from xmodal.trainers.lifecycle.nonfinite import NonFiniteLossGuard
from xmodal.trainers.lifecycle.resilience import ResilientTrainingMixin
from xmodal.trainers.optimizer import ComponentLearningRatesMixin
from xmodal.trainers.sampling import LengthGroupedSampler


def loss_context(
    model, inputs: dict, composer: LossComposer, *, full_logits: bool, num_items_in_batch=None, global_step: int = 0
) -> LossContext:
    """One forward over the batch `inputs` (model inputs + `labels`, optional `branch`) for the composer's terms.

    `full_logits=False` runs the output head at the targets' prediction positions only (`xmodal.losses.selective`):
    the same loss values and gradients without the `[rows, tokens, vocab]` logits.
    """
    model_inputs = dict(inputs)
    labels = model_inputs.pop("labels")
    branch = model_inputs.pop("branch", None)
    forward_options = dict(output_hidden_states=composer.needs_hidden_states, use_cache=False)
    if full_logits:
        outputs = model(**model_inputs, **forward_options)
    else:
        outputs = forward_with_target_logits(model, model_inputs, labels, **forward_options)
    return LossContext(
        model=model,
        batch={**model_inputs, "labels": labels, "branch": branch},
        outputs=outputs,
        num_items_in_batch=num_items_in_batch,
        global_step=global_step,
        logits_at_targets=not full_logits,
    )


class XModalSFTTrainer(ResilientTrainingMixin, ComponentLearningRatesMixin, Trainer):
    """One forward per micro-batch feeds every loss term; terms are token-normalised over the global batch.

    The forward computes logits only where a term reads them (the targets) unless a term needs them all
    (`loss_context`); `compute_loss(..., return_outputs=True)` then returns those `[M, V]` target logits.

    `loss_composer` (from `xmodal.losses.build_loss`) returns the weighted total and each unweighted term.
    `ordered=True` keeps the dataset order (curriculum schedules), so resuming continues the schedule.
    `nonfinite` decides what a NaN/inf loss term does (see xmodal.trainers.lifecycle.nonfinite; default: stop the run).
    Strict resume and preemption come from `ResilientTrainingMixin` (trainers/resilience.py).
    """

    def __init__(
        self, *args, loss_composer, ordered: bool = False, nonfinite: NonFiniteLossGuard | None = None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.loss_composer = loss_composer
        self.ordered = ordered
        self.nonfinite = nonfinite or NonFiniteLossGuard()
        self.add_callback(self.nonfinite)
        # The terms divide token sums by `num_items_in_batch` themselves: the Trainer must count it and
        # must not divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = True
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_micro_batches = 0

    def _get_train_sampler(self, *args, **kwargs):
        if self.ordered:
            return SequentialSampler(self.train_dataset)
        if self.args.train_sampling_strategy == "group_by_length":
            group_size = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(self.train_dataset[self.args.length_column_name], group_size)
        return super()._get_train_sampler(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        context = loss_context(
            model,
            inputs,
            self.loss_composer,
            full_logits=self.loss_composer.needs_full_logits,
            num_items_in_batch=num_items_in_batch,
            global_step=self.state.global_step,
        )
        total, terms = self.loss_composer(context)
        # Each rank divided by the global token count, and data-parallel gradients are averaged over
        # ranks: scale back by the number of ranks so the result is the global token mean.
        scale = self.accelerator.num_processes if num_items_in_batch is not None else 1
        total = total * scale
        if model.training and self.nonfinite.observe(terms, step=self.state.global_step + 1):
            self._accumulate_terms(terms, scale)
        return (total, context.outputs) if return_outputs else total

    def _accumulate_terms(self, terms: dict[str, torch.Tensor], scale: int) -> None:
        for name, value in terms.items():
            value = value.detach().float() * scale
            self._term_sums[name] = self._term_sums.get(name, torch.zeros_like(value)) + value
        self._term_micro_batches += 1

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add each loss term, averaged over ranks and over the optimizer steps since the last log.

        Micro-batches whose terms were not finite (`on_nonfinite_loss=skip`) are left out of the average; every
        rank joins the same reductions even when it has nothing to add.
        """
        if "loss" in logs:
            device = self.args.device
            count = self.accelerator.reduce(torch.tensor(float(self._term_micro_batches), device=device), reduction="sum")
            sums = {entry.name: self._term_sums.get(entry.name, torch.zeros(())) for entry in self.loss_composer.terms}
            for name, total in sorted(sums.items()):
                total = self.accelerator.reduce(total.to(device), reduction="sum")
                if count.item():
                    logs[name] = round(float(total / count) * self.args.gradient_accumulation_steps, 6)
            self._term_sums.clear()
            self._term_micro_batches = 0
            if self.nonfinite.action == "skip":
                logs["skipped_steps"] = self.nonfinite.skipped_steps
        super().log(logs, *args, **kwargs)
