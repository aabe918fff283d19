"""PGPS9K plane-geometry problems: diagram + question + structural/semantic clauses + answer and choices.

Structural clauses are verbalised into English (the text-centric facts); semantic clauses are already
readable (`AB = 7`, `AC \\perp EB on B`) and are kept as they are. A clause of an unknown shape is kept
verbatim rather than guessed at.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError
from ..sample import image_part, make_sample, message, text_part
from .base import Source, existing_image, read_json_records, require

# A diagram point: a capital letter, optionally with digits or primes (A, B1, C').
_POINT = re.compile(r"^[A-Z][0-9]*'*$")
ANSWER_FORMATS = ("value", "choice_letter")


def verbalise_clause(clause: str) -> str:
    """`line A B C` -> `B is on line AC.`; `line m lieson P Q` -> `P, Q lie on line m.`;
    `\\odot O lieson A B C` -> `A, B, C lie on circle O.`; anything else is returned unchanged."""
    tokens = clause.split()
    if len(tokens) >= 4 and tokens[2] == "lieson" and tokens[0] in ("line", "\\odot"):
        points = tokens[3:]
        shape = "line" if tokens[0] == "line" else "circle"
        if all(_POINT.match(p) for p in points):
            verb = "lies" if len(points) == 1 else "lie"
            return f"{', '.join(points)} {verb} on {shape} {tokens[1]}."
    if tokens and tokens[0] == "line" and len(tokens) >= 3 and all(_POINT.match(p) for p in tokens[1:]):
        points = tokens[1:]
        if len(points) == 2:
            return f"{points[0]}{points[1]} is a line segment."
        inner = points[1:-1]
        verb = "is" if len(inner) == 1 else "are"
        return f"{', '.join(inner)} {verb} on line {points[0]}{points[-1]}."
    return clause


def format_number(text: str) -> str:
    """`'14.900'` -> `'14.9'`, `'3.000'` -> `'3'`; a non-numeric answer is returned unchanged."""
    try:
        value = float(text)
    except ValueError:
        return text.strip()
    return f"{value:.3f}".rstrip("0").rstrip(".")


class Pgps9kSource(Source):
    """`root`: a folder with PGPS9K `*.json` files (`files` glob) and the diagrams in `image_dir`.

    Each sample is the vision-centric form (diagram + question); `meta.facts` holds the verbalised structural
    clauses and the semantic clauses, and `meta.question` the question text, for the paired builders.
    """

    def __init__(
        self,
        root: str,
        files: str = "*.json",
        image_dir: str = "Diagram_Visual",
        name: str = "pgps9k",
        choices_in_prompt: bool = False,  # append "Choices: ..." to the question
        choices_template: str = "\nChoices: {choices}",
        answer_format: str = "value",  # value: the number; choice_letter: A-D of the matching choice
        on_error: str = "raise",
        limit: int | None = None,
    ):
        super().__init__(name, on_error, limit)
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        self.root = Path(root)
        self.files = files
        self.image_dir = image_dir
        self.choices_in_prompt = choices_in_prompt
        self.choices_template = choices_template
        self.answer_format = answer_format

    def _raw_records(self):
        paths = sorted(self.root.glob(self.files))
        if not paths:
            raise FileNotFoundError(f"no PGPS9K files matching {self.files!r} in {self.root.resolve()}")
        for path in paths:
            yield from read_json_records(path)

    def _to_sample(self, file, record_id, raw):
        diagram = require(raw, file, record_id, "diagram")
        question = require(raw, file, record_id, "text")
        structural = self._clauses(raw, file, record_id, "parsing_stru_seqs")
        semantic = self._clauses(raw, file, record_id, "parsing_sem_seqs")
        answer = format_number(str(require(raw, file, record_id, "answer", (str, int, float))))
        choices = raw.get("choices") or []
        if not isinstance(choices, list):
            raise DataError(file, record_id, "choices", "expected a list", "wrong type")
        choices = [format_number(str(c)) for c in choices]
        prompt = question
        if self.choices_in_prompt and choices:
            labelled = " ".join(f"{letter}. {c}" for letter, c in zip(_letters(len(choices)), choices))
            prompt += self.choices_template.format(choices=labelled)
        target = answer if self.answer_format == "value" else self._letter(answer, choices, file, record_id)
        image = existing_image(self.root / self.image_dir, diagram, file, record_id, "diagram")
        messages = [message("user", [image_part(), text_part(prompt)]), message("assistant", [text_part(target)])]
        meta = {
            "question": prompt,
            "facts": [verbalise_clause(c) for c in structural] + semantic,
            "structural_clauses": structural,
            "semantic_clauses": semantic,
            "answer": answer,
            "choices": choices,
            "problem_type": raw.get("type"),
        }
        sample_id = f"{self.name}/{Path(file).stem}/{record_id}"
        return make_sample(sample_id, self.name, messages, [image], meta=meta)

    @staticmethod
    def _clauses(raw, file, record_id, field) -> list[str]:
        clauses = raw.get(field) or []
        if not isinstance(clauses, list) or not all(isinstance(c, str) for c in clauses):
            raise DataError(file, record_id, field, "expected a list of clause strings", "wrong type")
        return [c.strip() for c in clauses if c.strip()]

    @staticmethod
    def _letter(answer: str, choices: list[str], file, record_id) -> str:
        """The letter of the choice equal to the answer (numerically nearest: answers have 3 decimals, choices 1)."""
        if not choices:
            raise DataError(file, record_id, "choices", "answer_format=choice_letter needs choices", "no choices")
        try:
            numbers = [float(c) for c in choices]
            index = min(range(len(choices)), key=lambda i: abs(numbers[i] - float(answer)))
        except ValueError:
            if answer not in choices:
                raise DataError(
                    file, record_id, "answer", f"{answer!r} is not one of {choices}", "answer not in choices"
                )
            index = choices.index(answer)
        return _letters(len(choices))[index]


def _letters(count: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(count)]
