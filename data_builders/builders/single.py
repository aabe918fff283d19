"""One instruction per instance: the usual recipe."""

from __future__ import annotations

import random

from ..records import ArrowRecords, is_stream
from .base import Builder


class SingleBuilder(Builder):
    """Every source sample as an instance, shuffled by the seed (`shuffle: false` keeps the source order).

    Records held in Arrow stay there (shuffled through an index mapping); a stream (data.streaming=true) is
    shuffled through a buffer of `shuffle_buffer` records, the whole corpus being never in memory.
    """

    streams = True  # the one builder that needs no whole corpus

    def __init__(self, shuffle: bool = True, limit: int | None = None, shuffle_buffer: int = 10_000):
        super().__init__()
        self.shuffle = shuffle
        self.limit = limit
        self.shuffle_buffer = shuffle_buffer

    def build(self, source, *, seed: int, examples_per_step: int = 1):
        records = source.records()
        if is_stream(records):
            stream = records.shuffle(seed=seed, buffer_size=self.shuffle_buffer) if self.shuffle else records
            return stream.take(self.limit) if self.limit is not None else stream
        if isinstance(records, ArrowRecords):
            return (records.shuffled(seed) if self.shuffle else records)[: self.limit]
        instances = list(records)
        if self.shuffle:
            random.Random(seed).shuffle(instances)
        return instances[: self.limit]
