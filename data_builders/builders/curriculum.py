"""Curriculum (paper 2): text-centric instances for the first part of training, vision-centric after.

The schedule is the instance order itself (`ordered = True`: the trainer reads instances sequentially, so a
resumed run continues the schedule), and it is exactly as long as what the trainer will read:

- a step-based run (`max_steps` > 0) reads `max_steps x examples_per_step` instances: the records are cycled in
  reshuffled passes until that many are laid out (the last pass cut), so the run neither ends before the
  switch nor wraps back to text-centric instances after the schedule ends;
- an epoch-based run (`max_steps` <= 0) reads the list `num_train_epochs` times; a second epoch would replay
  the text-centric part, so it must be one epoch, with `passes` reshuffled passes over the records.

A schedule the run cannot honour (the switch outside the run, several epochs, `passes` on a step-based run)
raises a ConfigError at build time, before any model is loaded, saying which setting to change.
"""

from __future__ import annotations

import random

from xmodal.core.errors import ConfigError
from .base import Builder
from .views import DEFAULT_FACTS_TEMPLATE, centric_view, view_instance


class CurriculumBuilder(Builder):
    """Instances before the switch are text-centric, after it vision-centric.

    The switch is `switch_step` optimizer steps (x `examples_per_step` instances) when set, else
    `switch_fraction` of the instances the run reads. `max_steps` and `num_train_epochs` are the run's
    (conf/builder/curriculum.yaml interpolates them from `trainer`).
    """

    ordered = True

    def __init__(
        self,
        switch_step: int | None = None,
        switch_fraction: float = 0.5,
        passes: int | None = None,
        max_steps: int | None = None,
        num_train_epochs: float | None = None,
        facts_template: str = DEFAULT_FACTS_TEMPLATE,
        fact_separator: str = "\n",
    ):
        super().__init__()
        if switch_step is None and not 0.0 < switch_fraction < 1.0:
            raise ConfigError(f"builder.switch_fraction must lie strictly between 0 and 1, got {switch_fraction}")
        if passes is not None and passes < 1:
            raise ConfigError(f"builder.passes must be >= 1, got {passes}")
        self.switch_step = switch_step
        self.switch_fraction = switch_fraction
        self.passes = passes
        self.max_steps = max_steps
        self.num_train_epochs = num_train_epochs
        self.facts_template = facts_template
        self.fact_separator = fact_separator

    def scheduled_length(self, num_records: int, examples_per_step: int) -> tuple[int, str]:
        """(instances the trainer will read, how that number comes about, for error messages)."""
        if self.max_steps is not None and self.max_steps > 0:
            if self.passes is not None:
                raise ConfigError(
                    f"builder.passes={self.passes} applies to epoch-based runs; this run has trainer.max_steps="
                    f"{self.max_steps}, whose length sets the schedule: drop builder.passes, or set "
                    "trainer.max_steps=-1 trainer.num_train_epochs=1 to train on builder.passes passes"
                )
            total = self.max_steps * examples_per_step
            return total, f"trainer.max_steps={self.max_steps} x {examples_per_step} examples per step"
        if self.num_train_epochs != 1:
            epochs = "unset (HF's default is 3)" if self.num_train_epochs is None else self.num_train_epochs
            raise ConfigError(
                f"a curriculum schedule is read once: trainer.num_train_epochs is {epochs}, and every further "
                "epoch would replay the text-centric part. Set trainer.num_train_epochs=1 with builder.passes=N "
                "for N passes over the records, or set trainer.max_steps"
            )
        passes = self.passes or 1
        return passes * num_records, f"one epoch of builder.passes={passes} x {num_records} records"

    def switch_index(self, total: int, examples_per_step: int) -> int:
        if self.switch_step is not None:
            return self.switch_step * examples_per_step
        return round(self.switch_fraction * total)

    def build(self, source, *, seed: int, examples_per_step: int = 1) -> list[dict]:
        records = source.records()
        total, length = self.scheduled_length(len(records), examples_per_step)
        switch = self.switch_index(total, examples_per_step)
        if not 0 < switch < total:
            setting = (
                f"builder.switch_step={self.switch_step} (instance {switch})"
                if self.switch_step is not None
                else f"builder.switch_fraction={self.switch_fraction} (instance {switch})"
            )
            raise ConfigError(
                f"the curriculum switch must fall inside the run: {setting}, but the run reads {total} instances "
                f"({length}). Move the switch (builder.switch_step / builder.switch_fraction) or lengthen the run"
            )
        order = []
        for number in range(-(-total // len(records))):  # ceil: enough reshuffled passes to fill the schedule
            shuffled = list(records)
            random.Random(f"{seed}:{number}").shuffle(shuffled)
            order.extend((number, sample) for sample in shuffled)
        instances = []
        for index, (number, sample) in enumerate(order[:total]):
            condition = "text_centric" if index < switch else "vision_centric"
            view = centric_view(sample, condition, self.facts_template, self.fact_separator)
            instance = view_instance(sample, view, suffix=f":pass{number}")
            instance["meta"]["pass"] = number
            instances.append(instance)
        return instances
