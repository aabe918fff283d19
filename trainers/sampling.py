"""Length-grouped sampling: batches of instances of similar true length, in random order, so little is padded."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Indices whose consecutive runs of `group_size` hold instances of similar length.

    Each epoch: shuffle, cut into mega-batches of `mega_groups * group_size` instances, sort each by length,
    cut it into groups, and shuffle the order of all groups (a partial group stays last, so the data loader's
    batch boundaries stay on group boundaries). Unlike transformers' `LengthGroupedSampler`, the mega-batch
    does not shrink on small datasets (it keeps its padding low there too) and groups come in random order,
    not from longest to shortest within a mega-batch. `lengths` are the padded lengths each instance forces
    (`tokenize_instances`' `length` column: image tokens and the longer paired view included).
    `group_size` is the per-device batch times the accumulation steps, as in transformers.
    """

    def __init__(self, lengths: list[int], group_size: int, mega_groups: int = 50, generator=None):
        self.lengths = list(lengths)
        self.group_size = group_size
        self.mega_size = mega_groups * group_size
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        shuffled = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        groups = []
        for start in range(0, len(shuffled), self.mega_size):
            mega = sorted(shuffled[start : start + self.mega_size], key=self.lengths.__getitem__, reverse=True)
            groups += [mega[i : i + self.group_size] for i in range(0, len(mega), self.group_size)]
        partial = [groups.pop()] if len(groups[-1]) < self.group_size else []
        order = torch.randperm(len(groups), generator=self.generator).tolist()
        return iter([index for group in [groups[i] for i in order] + partial for index in group])
