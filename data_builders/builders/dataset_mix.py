"""Dataset-level mixing (the baseline of instance-level mixing): one instruction per instance, sources by ratio."""

from __future__ import annotations

import random

from ..sources.mixture import source_groups
from .base import Builder
from .pool import draw_pool


class DatasetMixBuilder(Builder):
    """`ratios` (source name -> weight, None = all of each) and `num_instructions` choose the pool; each
    instruction is one instance, in shuffled order."""

    def __init__(self, ratios: dict | None = None, num_instructions: int | None = None):
        super().__init__()
        self.ratios = ratios
        self.num_instructions = num_instructions

    def build(self, source, *, seed: int, examples_per_step: int = 1) -> list[dict]:
        pool = draw_pool(source_groups(source), self.ratios, self.num_instructions, seed)
        instances = [sample for name in sorted(pool) for sample in pool[name]]
        random.Random(seed).shuffle(instances)
        return instances
