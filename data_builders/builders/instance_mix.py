"""Instance-level modality mixing (paper 1): each instance concatenates k instructions from different groups.

Groups are sources (`group_by: source`) or modalities (`group_by: modality`: with images or text-only; with two
modalities every instance then holds an image instruction and a text-only one, and the instructions of the
larger modality left over join existing instances, so none holds a single modality). The instruction pool is
the one `dataset_mix` draws at the same settings, and every instruction lands in exactly one instance, so both
builders train on the same multiset of instructions.

`layout: interleaved` keeps each instruction whole, one after the other; `contexts_first` puts every
instruction's context (its first user turn less the question at its end) first, then the questions and answers
in turn, so that answering one question has to reach past the other instruction's context, across the modality
boundary.
"""

from __future__ import annotations

import logging
import random

from xmodal.core.errors import DataError
from ..sample import make_sample, message, text_part
from ..sources.mixture import source_groups
from .base import Builder
from .pool import draw_pool

logger = logging.getLogger(__name__)
GROUP_BY = ("source", "modality")
SUPERVISE = ("all", "last", "random")
LAYOUTS = ("interleaved", "contexts_first")


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
        layout: str = "interleaved",
    ):
        super().__init__()
        if k < 2:
            raise ValueError(f"instance mixing needs k >= 2 instructions per instance, got {k}")
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
        if supervise not in SUPERVISE:
            raise ValueError(f"supervise must be one of {SUPERVISE}, got {supervise!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
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
        messages, images, described, contexts = [], [], [], []
        for position, (group, sample) in enumerate(parts):
            turns = sample["messages"]
            if self.layout == "contexts_first":
                context, turns = split_context(sample)
                contexts.extend(context)
            for msg in turns:
                supervised = position in trained and msg.get("train", True)
                messages.append(msg if msg["role"] != "assistant" or supervised else {**msg, "train": False})
            images.extend(sample["images"])
            described.append(
                {"id": sample["id"], "source": sample["source"], "group": group, "condition": sample["condition"],
                 "target": sample["target"], "supervised": position in trained}
            )
        if contexts:
            first_user = next(n for n, msg in enumerate(messages) if msg["role"] == "user")
            messages[first_user] = {**messages[first_user], "content": contexts + messages[first_user]["content"]}
        sources = "+".join(dict.fromkeys(sample["source"] for _, sample in parts))
        meta = {"parts": described, "groups": sorted({group for group, _ in parts})}
        return make_sample(f"instance_mix/{index:06d}", sources, messages, images, "instance_mix", meta)


def split_context(sample: dict) -> tuple[list[dict], list[dict]]:
    """(context parts, the conversation with its first user turn reduced to the question): the question is the
    last text part of the first user turn, or where `meta.question` ends that part, just that ending. Every image
    must sit in the context (they keep their order in front of all questions)."""
    turns = list(sample["messages"])
    first = next((n for n, msg in enumerate(turns) if msg["role"] == "user"), None)
    content = turns[first]["content"] if first is not None else []
    last_text = max((n for n, part in enumerate(content) if part["type"] == "text"), default=None)
    if last_text is None:
        raise DataError(sample["source"], sample["id"], "messages", "layout=contexts_first needs a user turn ending in "
                        "a text question", "no text in the first user turn")
    text, question = content[last_text]["text"], (sample.get("meta") or {}).get("question")
    context = content[:last_text]
    if question and text.endswith(question) and text != question:
        context, text = [*context, text_part(text[: -len(question)])], question
    context_images = sum(part["type"] == "image" for part in context)
    if context_images != len(sample["images"]):
        raise DataError(sample["source"], sample["id"], "messages", "layout=contexts_first needs every image in the "
                        "first user turn's context", f"{len(sample['images']) - context_images} images after it")
    turns[first] = message("user", [text_part(text)])  # parts after the last text part would be images: refused above
    return context, turns
