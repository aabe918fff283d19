"""A builder's instances read back as a source, so built instances (conflict questions, paired views) can join a
mixture beside plain records: paper 1 teaches conflict recognition as one kind of instruction among others."""

from __future__ import annotations

from collections import Counter


class BuiltSource:
    """The instances `builder` makes from `source` (with `seed`), as records named `name`."""

    def __init__(self, source, builder, seed: int, name: str):
        self.source = source
        self.builder = builder
        self.seed = seed
        self.name = name
        self._records: list[dict] | None = None

    def records(self) -> list[dict]:
        if self._records is None:
            self._records = self.builder.build(self.source, seed=self.seed)
        return self._records

    @property
    def skipped(self) -> Counter:
        return Counter({**self.source.skipped, **{f"dropped: {k}": n for k, n in self.builder.dropped.items()}})
