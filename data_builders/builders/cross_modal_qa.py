"""A downstream proxy for "better vision-language performance" (arXiv 2510.02608's second outcome), for evaluation
only: questions whose context spans both modalities without any conflict.

Per synthetic record, the keys are split into two disjoint non-empty sets, one drawn as cells in the image, the
other given as text facts (the record's own values where it has them, others drawn per record). Three items:
`cross_modal_qa_image` asks about a key in the image (the text facts distract), `cross_modal_qa_text` about a key
in the text (the image distracts), `cross_modal_qa_both` asks for the sum of one key from each (one fact from each
modality; languages whose values are digits only).
"""

from __future__ import annotations

import random

from xmodal.core.errors import ConfigError
from ..render import render_cells
from ..sample import image_part, make_sample, message, text_part
from ..sources.synthetic import SyntheticFactsSource
from .base import Builder

KINDS = ("image", "text", "both")


class CrossModalQABuilder(Builder):
    """Needs `data=synthetic` (a SyntheticFactsSource with 2 or more keys). `sum_question` (with `{first}` and
    `{second}`) asks for the two-fact sum."""

    def __init__(self, kinds: list[str] = KINDS, sum_question: str = "What is {first} + {second}?"):
        super().__init__()
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown cross-modal QA kinds {sorted(unknown)}; known: {list(KINDS)}")
        self.kinds = list(kinds)
        self.sum_question = sum_question

    def build(self, source, *, seed: int, examples_per_step: int = 1) -> list[dict]:
        if not isinstance(source, SyntheticFactsSource) or source.num_keys < 2:
            raise ConfigError("builder=cross_modal_qa needs data=synthetic with 2 or more keys (facts split between "
                              "the image and the text)")
        spec = source.languages[source.language]
        instances = []
        for sample in source.records():
            rng = random.Random(f"cross_modal_qa:{seed}:{sample['id']}")
            shown = {spec["keys"].index(key): spec["values"].index(value) for key, value in sample["meta"]["cells"].items()}
            values = {key: shown.get(key, rng.randrange(source.num_values)) for key in range(source.num_keys)}
            keys = list(values)
            rng.shuffle(keys)
            cut = rng.randint(1, source.num_keys - 1)
            in_image, in_text = sorted(keys[:cut]), sorted(keys[cut:])
            glyphs = [spec["values"][values[k]] if k in in_image else None for k in range(source.num_keys)]
            image = render_cells(glyphs, source.image_size, root=source.cache_dir)
            facts = source.facts_template.format(
                facts=source.fact_separator.join(source.fact(source.language, k, values[k]) for k in in_text))
            for kind in self.kinds:
                if kind == "both":
                    if not all(value.isdigit() for value in spec["values"]):
                        continue
                    first, second = rng.choice(in_image), rng.choice(in_text)
                    question = self.sum_question.format(first=spec["keys"][first], second=spec["keys"][second])
                    answer = str(int(spec["values"][values[first]]) + int(spec["values"][values[second]]))
                else:
                    asked = rng.choice(in_image if kind == "image" else in_text)
                    question = spec["question"].format(key=spec["keys"][asked])
                    answer = spec["values"][values[asked]]
                messages = [message("user", [image_part(), text_part(facts + question)]),
                            message("assistant", [text_part(answer)])]
                condition = f"cross_modal_qa_{kind}"
                meta = {"record_id": sample["id"], "question": question, "in_image": [spec["keys"][k] for k in in_image],
                        "in_text": [spec["keys"][k] for k in in_text]}
                instances.append(make_sample(f"{sample['id']}:{condition}", sample["source"], messages, [image],
                                             condition, meta))
        return instances
