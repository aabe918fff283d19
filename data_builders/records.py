"""Samples held in Arrow instead of a Python list: what a source of a large corpus returns from `records()`."""

from __future__ import annotations

import json
from collections.abc import Sequence

import datasets

# The column of prepared and built data that holds one sample (an instance) as JSON.
SAMPLE_COLUMN = "instance"


class ArrowRecords(Sequence):
    """A read-only sequence of samples stored as JSON strings in an Arrow-backed `datasets.Dataset`.

    Samples are decoded one at a time, so memory stays flat in the corpus size; builders that need a list
    (mixing, pairing) still get one by iterating, the plain `single` builder keeps the Arrow table.
    """

    def __init__(self, dataset: datasets.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ArrowRecords(self.dataset.select(range(len(self))[index]))
        return json.loads(self.dataset[index][SAMPLE_COLUMN])

    def __iter__(self):
        for batch in self.dataset.iter(batch_size=1024):
            yield from map(json.loads, batch[SAMPLE_COLUMN])

    def shuffled(self, seed: int) -> ArrowRecords:
        """The same samples in a seeded order (an index mapping over the table: nothing is copied)."""
        return ArrowRecords(self.dataset.shuffle(seed=seed))


def is_stream(records) -> bool:
    """True for records read lazily from a `datasets.IterableDataset` (data.streaming=true): no length, no index."""
    return isinstance(records, datasets.IterableDataset)
