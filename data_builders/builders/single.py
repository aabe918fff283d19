"""One instruction per instance: the usual recipe."""

from __future__ import annotations

import random

from .base import Builder


class SingleBuilder(Builder):
    """Every source sample as an instance, shuffled by the seed (`shuffle: false` keeps the source order)."""

    def __init__(self, shuffle: bool = True, limit: int | None = None):
        super().__init__()
        self.shuffle = shuffle
        self.limit = limit

    def build(self, source, *, seed: int, examples_per_step: int = 1) -> list[dict]:
        instances = list(source.records())
        if self.shuffle:
            random.Random(seed).shuffle(instances)
        return instances[: self.limit]
