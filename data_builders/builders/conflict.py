"""CMQA/CLQA-style conflict evaluation: a question and two pieces of evidence that contradict (or agree).

Conditions place the two pieces in slots: `unimodal_text` (two text passages), `unimodal_image` (two rendered
images, one per piece, so each has its own token span), `cross_modal` (one text, one image), `cross_lingual`
(text in the record's language and in the second one).
Per record and condition, the conflict instances cover which slot is true x which slot comes first, and the
`<condition>_control` instances (no conflict: both pieces support the answer, or both the counter-answer)
cover the same orders, so every count is balanced. Where the record gives two pieces per side
(`meta.conflict_qa.pieces`, each with its own distractor facts), the slot at index i shows piece i, so no
control repeats one piece twice: "are the two pieces identical?" decides nothing. Evidence texts, slots and content-part positions go in
`meta` for measuring attention on each piece.
"""

from __future__ import annotations

import itertools
import random

from xmodal.core.errors import DataError
from ..render import render_cells, render_text
from ..sample import image_part, make_sample, message, text_part
from .base import Builder

# condition -> its two slots as (slot name, modality, language)
SLOTS = {
    "unimodal_text": (("text_a", "text", "l1"), ("text_b", "text", "l1")),
    "unimodal_image": (("image_a", "image", "l1"), ("image_b", "image", "l1")),
    "cross_modal": (("text", "text", "l1"), ("image", "image", "l1")),
    "cross_lingual": (("l1", "text", "l1"), ("l2", "text", "l2")),
}
ORDERS = ((0, 1), (1, 0))
VARIANTS = ("all", "rotate")
IMAGE_EVIDENCE = ("auto", "text")


class ConflictBuilder(Builder):
    """Needs sources whose samples carry `meta.conflict_qa` (synthetic, conflict_qa).

    `variants: all` emits the 4 conflict and 4 control variants per record and condition; `rotate` emits one
    of each, cycling through the variants across records (balanced over every 4 records).
    Prompt pieces: `evidence_label` (with `{n}`), `evidence_separator`, `question_template` (with `{question}`);
    targets: `target_conflict`, `target_agree` (with `{answer}`), each after `reading_template` (with `{first}` and
    `{second}`: the value the first and the second shown piece give for the asked key, in the record's language;
    "" by default): a reading of both pieces before the decision, so that deciding compares two values the
    response has just written instead of two values found in the prompt within one token.
    `image_evidence`: `auto` draws an image slot's evidence in the record's own image format where the record
    gives it (`meta.conflict_qa.evidence_cells`: the synthetic cell images a tiny model can read), else renders
    the passage as text; `text` always renders the passage. `render`: the TextStyle of rendered passages.
    """

    def __init__(
        self,
        conditions: list[str] = tuple(SLOTS),
        controls: bool = True,
        variants: str = "all",
        evidence_label: str = "Evidence {n}: ",
        evidence_separator: str = "\n",
        question_template: str = "Question: {question}\nDo the sources agree or disagree?",
        target_conflict: str = "The sources conflict.",
        target_agree: str = "The sources agree. {answer}",
        reading_template: str = "",
        image_evidence: str = "auto",
        render: dict | None = None,
        cache_dir: str | None = None,
        shuffle: bool = False,
    ):
        super().__init__()
        unknown = set(conditions) - set(SLOTS)
        if unknown:
            raise ValueError(f"unknown conflict conditions {sorted(unknown)}; known: {list(SLOTS)}")
        if variants not in VARIANTS:
            raise ValueError(f"variants must be one of {VARIANTS}, got {variants!r}")
        if image_evidence not in IMAGE_EVIDENCE:
            raise ValueError(f"image_evidence must be one of {IMAGE_EVIDENCE}, got {image_evidence!r}")
        self.image_evidence = image_evidence
        self.conditions = list(conditions)
        self.controls = controls
        self.variants = variants
        self.evidence_label = evidence_label
        self.evidence_separator = evidence_separator
        self.question_template = question_template
        self.target_conflict = target_conflict
        self.target_agree = target_agree
        self.reading_template = reading_template
        self.render = dict(render or {})
        self.cache_dir = cache_dir
        self.shuffle = shuffle

    def build(self, source, *, seed: int, examples_per_step: int = 1) -> list[dict]:
        instances = []
        for number, sample in enumerate(source.records()):
            qa = sample["meta"].get("conflict_qa")
            if qa is None:
                raise DataError(
                    sample["source"], sample["id"], "meta.conflict_qa",
                    "builder=conflict needs (question, evidence, answer) records: data=synthetic or data=conflict_qa",
                    "no conflict_qa",
                )
            for condition in self.conditions:
                if condition == "cross_lingual" and not (qa.get("evidence_l2") and qa.get("counter_evidence_l2")):
                    self.dropped[f"{condition}: no second-language evidence"] += 1
                    continue
                # conflict: which slot holds the supporting evidence; control: what both pieces support
                families = {"conflict": (0, 1), "control": ("answer", "counter")}
                for kind, choices in families.items():
                    if kind == "control" and not self.controls:
                        continue
                    variants = list(itertools.product(choices, ORDERS))
                    if self.variants == "rotate":
                        variants = [variants[number % len(variants)]]
                    for choice, order in variants:
                        instances.append(self._instance(sample, qa, condition, kind, choice, order))
        if self.shuffle:
            random.Random(seed).shuffle(instances)
        return instances

    def _instance(self, sample: dict, qa: dict, condition: str, kind: str, choice, order: tuple[int, int]) -> dict:
        """`choice`: for a conflict, the index of the slot holding the supporting evidence; for a control, what
        both pieces support (`answer` or `counter`). `order`: the slot indices in the order they are shown."""
        slots = SLOTS[condition]
        is_conflict = kind == "conflict"
        supports = ["answer" if index == choice else "counter" for index in range(2)] if is_conflict else [choice] * 2
        parts, images, evidence = [], [], []
        for n, index in enumerate(order, start=1):
            name, modality, language = slots[index]
            key = "evidence" if supports[index] == "answer" else "counter_evidence"
            piece = qa["pieces"][key][index] if qa.get("pieces") else None
            if piece:
                passage = piece["text" if language == "l1" else "text_l2"]
            else:
                passage = qa[key if language == "l1" else f"{key}_l2"]
            parts.append(text_part(self.evidence_label.format(n=n)))
            record = {"slot": name, "modality": modality, "language": language, "text": passage,
                      "supports": supports[index], "part_index": len(parts)}
            if modality == "image":
                record["image_index"] = len(images)
                images.append(self._evidence_image(piece["cells"] if piece else qa.get(f"{key}_cells"), passage))
                parts.append(image_part())
            else:
                parts.append(text_part(passage))
            parts.append(text_part(self.evidence_separator))
            evidence.append(record)
        parts.append(text_part(self.question_template.format(question=qa["question"])))
        if is_conflict:
            decision = self.target_conflict
        else:
            decision = self.target_agree.format(answer=qa["answer"] if choice == "answer" else qa["counter_answer"])
        first, second = (qa["answer"] if supports[index] == "answer" else qa["counter_answer"] for index in order)
        target = self.reading_template.format(first=first, second=second) + decision
        label = f"true_{slots[choice][0]}" if is_conflict else f"agree_{choice}"
        meta = {
            "conflict": is_conflict,
            "conflict_condition": condition,
            "true_side": slots[choice][0] if is_conflict else None,
            "agree_on": None if is_conflict else choice,
            "order": [slots[i][0] for i in order],
            "evidence": evidence,
            "question": qa["question"],
            "answer": qa["answer"],
            "counter_answer": qa["counter_answer"],
            "record_id": sample["id"],
        }
        messages = [message("user", parts), message("assistant", [text_part(target)])]
        name = condition if is_conflict else f"{condition}_control"
        instance_id = f"{sample['id']}:{name}:{label}:{'-'.join(meta['order'])}"
        return make_sample(instance_id, sample["source"], messages, images, name, meta)

    def _evidence_image(self, cells: dict | None, passage: str) -> str:
        """The image of one piece of evidence: its cells (where given, with `image_evidence: auto`) or its text."""
        if cells and self.image_evidence == "auto":
            return render_cells(cells["glyphs"], cells["image_size"], root=self.cache_dir)
        return render_text(passage, self.render, root=self.cache_dir)
