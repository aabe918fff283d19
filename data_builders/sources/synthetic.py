"""The embedded offline task: a few key/value facts and a question about one key, deterministic by seed.

Facts can be drawn into a small image (each key owns a fixed cell, its value is drawn there as one large
glyph: what a random-init tiny VLM can learn to read), given as text, or both. Each language is a disjoint
surface form of the same facts (other key and value words), for cross-lingual conditions; asking the question
in another language than the facts' (`question_language`) makes a bilingual record, from which the two
languages' correspondence can be learnt.
"""

from __future__ import annotations

import random

from ..render import render_cells
from ..sample import image_part, make_sample, message, text_part
from .base import Source

FACTS_IN = ("image", "text", "both")

DEFAULT_LANGUAGES = {
    "en": {
        "keys": ["A", "B", "C", "D"],
        "values": [str(d) for d in range(10)],
        "fact": "{key} = {value}",
        "fact_forms": ["{key} = {value}", "{key} is {value}", "the value of {key} is {value}"],
        "question": "What is the value of {key}?",
    },
    "xx": {
        "keys": ["red", "green", "blue", "yellow"],
        "values": list("abcdefghjk"),
        "fact": "{key} is {value}",
        "fact_forms": ["{key} is {value}", "{key} = {value}", "the letter of {key} is {value}"],
        "question": "Which letter is {key}?",
    },
}


class SyntheticFactsSource(Source):
    """`num_records` records of `num_facts` (min, max) facts each, in `language`, with facts in `facts_in`.

    The question (and so the answer) is in `question_language` (default: `language`). The record's messages
    follow `facts_in`; `meta` also carries the question, the verbalised facts (for the paired builders) and a
    contradicting value with its evidence in both languages, as text and as cells of the record's image with
    the asked key's cell holding the value or the counter-value (for the conflict builder).

    `answer_template` (with `{key}` and `{answer}`) is the assistant's response: the bare answer by default, or a
    sentence that carries tokens before the answer (the embedded RL run's responses).

    For the conflict builder, `meta.conflict_qa.pieces` also holds two evidence pieces per side (supporting the
    answer, supporting the counter-value), each with its own independently drawn distractor facts about other
    keys: text in shuffled order and varied surface forms (a language's `fact_forms`), image cells drawn
    independently. The two pieces of a side never coincide, so pieces that agree differ on the surface as much
    as pieces that conflict, and only the asked key tells them apart.
    """

    def __init__(
        self,
        num_records: int = 2000,
        seed: int = 0,
        num_facts: tuple[int, int] = (2, 4),
        language: str = "en",
        second_language: str = "xx",
        question_language: str | None = None,
        languages: dict | None = None,
        facts_in: str = "image",
        facts_template: str = "Facts: {facts}\n",
        fact_separator: str = ", ",
        image_size: int = 64,
        cache_dir: str | None = None,
        name: str = "synthetic",
        answer_template: str = "{answer}",
    ):
        super().__init__(name)
        if facts_in not in FACTS_IN:
            raise ValueError(f"facts_in must be one of {FACTS_IN}, got {facts_in!r}")
        self.languages = {code: dict(spec) for code, spec in (languages or DEFAULT_LANGUAGES).items()}
        question_language = question_language or language
        for code in (language, second_language, question_language):
            if code not in self.languages:
                raise ValueError(f"language {code!r} is not defined; defined: {sorted(self.languages)}")
        sizes = {(len(spec["keys"]), len(spec["values"])) for spec in self.languages.values()}
        if len(sizes) != 1:
            raise ValueError("every language needs the same number of keys and of values (they name the same facts)")
        self.num_keys, self.num_values = sizes.pop()
        low, high = num_facts
        if not 1 <= low <= high <= self.num_keys or self.num_values < 2:
            raise ValueError(f"num_facts {num_facts} must lie in [1, {self.num_keys}] and values must number 2 or more")
        self.num_records = num_records
        self.seed = seed
        self.num_facts = (low, high)
        self.language = language
        self.second_language = second_language
        self.question_language = question_language
        self.facts_in = facts_in
        self.facts_template = facts_template
        self.fact_separator = fact_separator
        self.image_size = image_size
        self.cache_dir = cache_dir
        self.answer_template = answer_template

    def fact(self, language: str, key: int, value: int) -> str:
        spec = self.languages[language]
        return spec["fact"].format(key=spec["keys"][key], value=spec["values"][value])

    def _evidence_pieces(self, index: int, asked: int, value: int, side: str) -> list[dict]:
        """Two pieces of evidence that `asked` has `value`, each among 1 or more distractor facts drawn for it
        alone (keys, values, order, surface forms), redrawn until the two differ in text and in cells."""
        rng = random.Random(f"{self.name}:{self.seed}:{index}:{side}")
        others = [key for key in range(self.num_keys) if key != asked]
        pieces: list[dict] = []
        while len(pieces) < 2:
            shown = {key: rng.randrange(self.num_values) for key in rng.sample(others, rng.randint(1, len(others)))}
            shown[asked] = value
            order = list(shown)
            rng.shuffle(order)
            texts = {}
            for slot, language in (("text", self.language), ("text_l2", self.second_language)):
                spec = self.languages[language]
                forms = spec.get("fact_forms") or [spec["fact"]]
                facts = [rng.choice(forms).format(key=spec["keys"][key], value=spec["values"][shown[key]])
                         for key in order]
                texts[slot] = self.fact_separator.join(facts)
            glyphs = [self.languages[self.language]["values"][shown[k]] if k in shown else None
                      for k in range(self.num_keys)]
            piece = {**texts, "cells": {"glyphs": glyphs, "image_size": self.image_size}}
            if not pieces or all(piece[field] != pieces[0][field] for field in ("text", "text_l2", "cells")):
                pieces.append(piece)
        return pieces

    def _raw_records(self):
        for index in range(self.num_records):
            # One generator per record (a record does not change with num_records); the name keeps mixed
            # synthetic sources from repeating the same facts.
            rng = random.Random(f"{self.name}:{self.seed}:{index}")
            keys = sorted(rng.sample(range(self.num_keys), rng.randint(*self.num_facts)))
            values = {key: rng.randrange(self.num_values) for key in keys}
            asked = rng.choice(keys)
            counter = rng.choice([v for v in range(self.num_values) if v != values[asked]])
            yield "<synthetic>", index, (values, asked, counter)

    def _to_sample(self, file, record_id, raw):
        values, asked, counter = raw
        pieces = ({"evidence": self._evidence_pieces(record_id, asked, values[asked], "evidence"),
                   "counter_evidence": self._evidence_pieces(record_id, asked, counter, "counter_evidence")}
                  if self.num_keys > 1 else None)
        spec, asking = self.languages[self.language], self.languages[self.question_language]
        facts = [self.fact(self.language, key, value) for key, value in values.items()]
        question = asking["question"].format(key=asking["keys"][asked])
        answer = asking["values"][values[asked]]

        def cells(asked_value: int) -> list[str | None]:
            shown = {**values, asked: asked_value}
            return [spec["values"][shown[k]] if k in shown else None for k in range(self.num_keys)]

        parts, images = [], []
        if self.facts_in in ("image", "both"):
            images.append(render_cells(cells(values[asked]), self.image_size, root=self.cache_dir))
            parts.append(image_part())
        facts_text = self.facts_template.format(facts=self.fact_separator.join(facts))
        parts.append(text_part(facts_text + question if self.facts_in in ("text", "both") else question))
        other = self.second_language
        meta = {
            "question": question,
            "facts": facts,
            "facts_in": self.facts_in,
            "language": self.language,
            "cells": {spec["keys"][k]: spec["values"][v] for k, v in values.items()},
            "conflict_qa": {  # in the record's language, whatever language its own question is in
                "question": spec["question"].format(key=spec["keys"][asked]),
                "answer": spec["values"][values[asked]],
                "counter_answer": spec["values"][counter],
                "evidence": self.fact(self.language, asked, values[asked]),
                "counter_evidence": self.fact(self.language, asked, counter),
                "evidence_l2": self.fact(other, asked, values[asked]),
                "counter_evidence_l2": self.fact(other, asked, counter),
                # the same evidence as the record's image: the conflict builder renders these for image slots
                "evidence_cells": {"glyphs": cells(values[asked]), "image_size": self.image_size},
                "counter_evidence_cells": {"glyphs": cells(counter), "image_size": self.image_size},
                **({"pieces": pieces} if pieces else {}),
            },
        }
        response = self.answer_template.format(key=asking["keys"][asked], answer=answer)
        messages = [message("user", parts), message("assistant", [text_part(response)])]
        condition = {"image": "vision_centric", "text": "text_only", "both": "text_centric"}[self.facts_in]
        languages = dict.fromkeys((self.language, self.question_language))
        sample_id = f"{self.name}/{'-'.join(languages)}/{self.seed}/{record_id}"
        return make_sample(sample_id, self.name, messages, images, condition=condition, meta=meta)
