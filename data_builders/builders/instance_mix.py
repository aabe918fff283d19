"""Instance-level modality mixing (paper 1): each instance concatenates k instructions from different groups.

Groups are sources (`group_by: source`) or modalities (`group_by: modality`: with images or text-only). The
instruction pool is the one `dataset_mix` draws at the same settings, and every instruction lands in exactly
one instance, so both builders train on the same multiset of instructions.
"""

from __future__ import annotations

import logging
import random

from ..sample import make_sample
from ..sources.mixture import source_groups
from .base import Builder
from .pool import draw_pool

logger = logging.getLogger(__name__)
GROUP_BY = ("source", "modality")
SUPERVISE = ("all", "last", "random")


def modality(sample: dict) -> str:
    return "image" if sample["images"] else "text"


class InstanceMixBuilder(Builder):
    """`k` instructions per instance, each from a different group while two or more groups have some left.

    `shuffle_order`: random order of the instructions inside an instance (else by group name).
    `supervise`: which instructions' answers are trained: `all`, the `last` one, or one at `random`.
    `ratios` / `num_instructions`: the pool, as in `dataset_mix`.
    """

    def __init__(
        self,
        k: int = 2,
        group_by: str = "source",
        ratios: dict | None = None,
        num_instructions: int | None = None,
        shuffle_order: bool = True,
        supervise: str = "all",
    ):
        super().__init__()
        if k < 2:
            raise ValueError(f"instance mixing needs k >= 2 instructions per instance, got {k}")
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
        if supervise not in SUPERVISE:
            raise ValueError(f"supervise must be one of {SUPERVISE}, got {supervise!r}")
        self.k = k
        self.group_by = group_by
        self.ratios = ratios
        self.num_instructions = num_instructions
        self.shuffle_order = shuffle_order
        self.supervise = supervise

    def build(self, source, *, seed: int, examples_per_step: int = 1) -> list[dict]:
        rng = random.Random(seed)
        pool = draw_pool(source_groups(source), self.ratios, self.num_instructions, seed)
        groups: dict[str, list[dict]] = {}
        for name in sorted(pool):
            for sample in pool[name]:
                groups.setdefault(name if self.group_by == "source" else modality(sample), []).append(sample)
        if len(groups) < 2:
            raise ValueError(
                f"instance mixing needs instructions from two or more {self.group_by}s, got {sorted(groups)}; "
                "use a mixture source (data=mixture) or group_by=modality"
            )
        for name in sorted(groups):
            rng.shuffle(groups[name])
        tuples = self._draw_tuples(groups)
        instances = [self._merge(index, parts, rng) for index, parts in enumerate(tuples)]
        rng.shuffle(instances)
        return instances

    def _draw_tuples(self, groups: dict[str, list[dict]]) -> list[list[tuple[str, dict]]]:
        """Take one instruction from each of the k fullest groups until fewer than two groups have any left;
        the rest (all from one group) join existing instances round-robin, so nothing is left out."""
        tuples = []
        while True:
            live = sorted((name for name in groups if groups[name]), key=lambda name: (-len(groups[name]), name))
            if len(live) < 2:
                break
            tuples.append([(name, groups[name].pop()) for name in live[: self.k]])
        leftovers = [(name, sample) for name in sorted(groups) for sample in groups[name]]
        if leftovers:
            logger.warning(
                "%d instructions of %s had no other group left to pair with and were appended to existing "
                "instances; set builder.ratios to balance the groups",
                len(leftovers), sorted({name for name, _ in leftovers}),
            )
        for index, item in enumerate(leftovers):
            tuples[index % len(tuples)].append(item)
        return tuples

    def _merge(self, index: int, parts: list[tuple[str, dict]], rng: random.Random) -> dict:
        if self.shuffle_order:
            rng.shuffle(parts)
        else:
            parts.sort(key=lambda item: item[0])
        trained = {
            "all": set(range(len(parts))),
            "last": {len(parts) - 1},
            "random": {rng.randrange(len(parts))},
        }[self.supervise]
        messages, images, described = [], [], []
        for position, (group, sample) in enumerate(parts):
            for msg in sample["messages"]:
                supervised = position in trained and msg.get("train", True)
                messages.append(msg if msg["role"] != "assistant" or supervised else {**msg, "train": False})
            images.extend(sample["images"])
            described.append(
                {"id": sample["id"], "source": sample["source"], "group": group, "condition": sample["condition"],
                 "target": sample["target"], "supervised": position in trained}
            )
        sources = "+".join(dict.fromkeys(sample["source"] for _, sample in parts))
        meta = {"parts": described, "groups": sorted({group for group, _ in parts})}
        return make_sample(f"instance_mix/{index:06d}", sources, messages, images, "instance_mix", meta)
