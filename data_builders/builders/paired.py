"""Paired text-centric / vision-centric instances of the same records (paper 2's modality-gap recipes)."""

from __future__ import annotations

import random

from .base import Builder
from .views import DEFAULT_FACTS_TEMPLATE, centric_view, view_instance

CONDITIONS = ("vision_centric", "text_centric")
EMIT = ("both", *CONDITIONS, "mix")


class PairedBuilder(Builder):
    """`emit`:
    - `both`: one instance per record, the vision-centric view, with the text-centric view under `teacher`
      (the alignment loss runs both branches);
    - `text_centric` / `vision_centric`: that condition alone;
    - `mix`: both views as separate instances (the 1:1 mix), shuffled together.
    """

    def __init__(
        self,
        emit: str = "both",
        facts_template: str = DEFAULT_FACTS_TEMPLATE,
        fact_separator: str = "\n",
        shuffle: bool = True,
    ):
        super().__init__()
        if emit not in EMIT:
            raise ValueError(f"emit must be one of {EMIT}, got {emit!r}")
        self.emit = emit
        self.facts_template = facts_template
        self.fact_separator = fact_separator
        self.shuffle = shuffle

    def build(self, source, *, seed: int, examples_per_step: int = 1) -> list[dict]:
        instances = []
        for sample in source.records():
            views = {c: centric_view(sample, c, self.facts_template, self.fact_separator) for c in CONDITIONS}
            if self.emit == "both":
                instance = view_instance(sample, views["vision_centric"])
                instance["teacher"] = views["text_centric"]
                instances.append(instance)
            else:
                wanted = ("text_centric", "vision_centric") if self.emit == "mix" else (self.emit,)
                instances.extend(view_instance(sample, views[c]) for c in wanted)
        if self.shuffle:
            random.Random(seed).shuffle(instances)
        return instances
