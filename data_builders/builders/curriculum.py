"""Curriculum (paper 2): text-centric instances for the first part of training, vision-centric after.

The schedule is the instance order itself (`ordered = True`: the trainer reads instances sequentially, so a
resumed run continues the schedule). Train one epoch over the built list; `passes` sets how often each record
is seen.
"""

from __future__ import annotations

import random

from .base import Builder
from .views import DEFAULT_FACTS_TEMPLATE, centric_view, view_instance


class CurriculumBuilder(Builder):
    """`passes` reshuffled passes over the records; instances before the switch are text-centric.

    The switch is `switch_step` optimizer steps (turned into an instance index with `examples_per_step`) when
    set, else `switch_fraction` of all instances.
    """

    ordered = True

    def __init__(
        self,
        switch_step: int | None = None,
        switch_fraction: float = 0.5,
        passes: int = 2,
        facts_template: str = DEFAULT_FACTS_TEMPLATE,
        fact_separator: str = "\n",
    ):
        super().__init__()
        if switch_step is None and not 0.0 <= switch_fraction <= 1.0:
            raise ValueError(f"switch_fraction must lie in [0, 1], got {switch_fraction}")
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        self.switch_step = switch_step
        self.switch_fraction = switch_fraction
        self.passes = passes
        self.facts_template = facts_template
        self.fact_separator = fact_separator

    def switch_index(self, total: int, examples_per_step: int) -> int:
        if self.switch_step is not None:
            return min(self.switch_step * examples_per_step, total)
        return round(self.switch_fraction * total)

    def build(self, source, *, seed: int, examples_per_step: int = 1) -> list[dict]:
        records = source.records()
        order = []
        for number in range(self.passes):
            shuffled = list(records)
            random.Random(f"{seed}:{number}").shuffle(shuffled)
            order.extend((number, sample) for sample in shuffled)
        switch = self.switch_index(len(order), examples_per_step)
        instances = []
        for index, (number, sample) in enumerate(order):
            condition = "text_centric" if index < switch else "vision_centric"
            view = centric_view(sample, condition, self.facts_template, self.fact_separator)
            instance = view_instance(sample, view, suffix=f":pass{number}")
            instance["meta"]["pass"] = number
            instances.append(instance)
        return instances
