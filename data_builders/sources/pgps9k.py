"""PGPS9K plane-geometry problems: diagram + question + structural/semantic clauses + answer and choices.

A release holds `train.json` and `test.json` beside `Diagram_Visual/`; `split` picks the one file read, so
training never sees the test problems.

Two prompt styles:
- `compact` (default; short answer-only SFT): structural clauses are verbalised into English sentences (the
  text-centric facts), semantic clauses (`AB = 7`, `AC \\perp EB on B`) kept as they are, and a clause of an
  unknown shape kept verbatim rather than guessed at; the target is the bare answer.
- `paper`: the prompts of paper 2's released data preparation, word for word (see `paper_prompts`), whose
  target is the boxed answer (`\\boxed{14.9}`) the released grader reads. PGPS9K has no written solutions, so
  a supervised target carries no reasoning although the instruction asks for it; RL rollouts supply it.
- `release_eval`: the prompts of paper 2's released evaluation scripts, word for word (`release_eval_prompts`;
  they differ from the training prompts), boxed target as `paper`. `xmodal-eval setting=paper` uses them.
"""

from __future__ import annotations

import re
from pathlib import Path

from xmodal.core.errors import DataError
from ..sample import image_part, make_sample, message, text_part
from .base import Source, existing_image, read_json_records, require

# A diagram point: a capital letter, optionally with digits or primes (A, B1, C').
_POINT = re.compile(r"^[A-Z][0-9]*'*$")
ANSWER_FORMATS = ("value", "choice_letter")
SPLITS = ("train", "test")
PROMPT_STYLES = ("compact", "paper", "release_eval")

# The released instruction, appended to both views after a newline.
PAPER_INSTRUCTION = (
    "You should FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)
PAPER_TEXT_CENTRIC = "In this problem, {conditions}.\nBased on these conditions, answer the question: {question}"
PAPER_VISION_CENTRIC = "Based on the information in the image, answer the question: {question}"


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


def paper_structural_clause(clause: str) -> str:
    """A structural clause as the released data preparation words it; "" where it drops the clause.

    `line m lieson A B` -> `A, B lie on line m`; `line A B` (a two-point line) -> dropped; `line A B C` ->
    `B is on line AC`; five or more tokens keep the release's reading, which splits off the LAST two points as
    the line (`line D E I K` -> `D, E are on line IK`; the compact style reads `E, I are on line DK`);
    `\\odot O lieson A B` -> `In \\odot O, point A, B lie on \\odot O`; anything else -> dropped.
    """
    tokens = clause.split()
    if len(tokens) >= 4 and tokens[0] == "line" and tokens[2] == "lieson":
        return f"{', '.join(tokens[3:])} lie on line {tokens[1]}"
    if tokens[:1] == ["line"] and len(tokens) == 4:
        return f"{tokens[2]} is on line {tokens[1]}{tokens[3]}"
    if tokens[:1] == ["line"] and len(tokens) >= 5:
        return f"{', '.join(tokens[1:-2])} are on line {tokens[-2]}{tokens[-1]}"
    if len(tokens) >= 4 and tokens[0] == "\\odot" and tokens[2] == "lieson":
        return f"In \\odot {tokens[1]}, point {', '.join(tokens[3:])} lie on \\odot {tokens[1]}"
    return ""


def paper_prompts(question: str, structural: list[str], semantic: list[str]) -> dict[str, str]:
    """The released text-centric and vision-centric prompts (both followed by `PAPER_INSTRUCTION`).

    Text-centric: the kept structural clauses, then the semantic clauses verbatim, joined by ", " into one
    sentence after "In this problem, ", then the question asked "based on these conditions". A problem with
    no clause left falls back to the vision-centric wording, as the release's alignment data does.
    """
    conditions = [c for c in map(paper_structural_clause, structural) if c] + [c for c in semantic if c]
    vision = PAPER_VISION_CENTRIC.format(question=question)
    text = PAPER_TEXT_CENTRIC.format(conditions=", ".join(conditions), question=question) if conditions else vision
    return {
        "text_centric": f"{text}\n{PAPER_INSTRUCTION}",
        "vision_centric": f"{vision}\n{PAPER_INSTRUCTION}",
    }


# The released evaluation's instruction: follows the question directly (no space, no newline, no final period).
RELEASE_EVAL_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}"
)
RELEASE_EVAL_QUESTION = "Based on these conditions, answer the question: {question}"


def release_eval_prompts(question: str, structural: list[str], semantic: list[str]) -> dict[str, str]:
    """The released evaluation's text-centric and vision-centric prompts, word for word.

    Text-centric: "In this problem, ", every kept structural clause followed by ", ", the semantic clauses joined
    by ", ", then ".\\n" and the question; the release keeps this shape even where a part is empty ("..., .").
    Vision-centric: the same question sentence ("Based on these conditions, ...") without the conditions.
    """
    structural_part = "".join(f"{clause}, " for clause in map(paper_structural_clause, structural) if clause)
    asked = RELEASE_EVAL_QUESTION.format(question=question) + RELEASE_EVAL_INSTRUCTION
    return {
        "text_centric": f"In this problem, {structural_part}{', '.join(semantic)}.\n{asked}",
        "vision_centric": asked,
    }


CENTRIC_PROMPTS = {"paper": paper_prompts, "release_eval": release_eval_prompts}


def format_number(text: str) -> str:
    """`'14.900'` -> `'14.9'`, `'3.000'` -> `'3'`; a non-numeric answer is returned unchanged."""
    try:
        value = float(text)
    except ValueError:
        return text.strip()
    return f"{value:.3f}".rstrip("0").rstrip(".")


class Pgps9kSource(Source):
    """`root`: a PGPS9K release folder; `split` (train | test) picks `<root>/<split>.json`; diagrams in `image_dir`.

    Each sample is the vision-centric form (diagram + question); `meta.facts` holds the verbalised structural
    clauses and the semantic clauses, and `meta.question` the question text, for the paired builders. With
    `prompt_style=paper`, `meta.centric_prompts` holds the two released prompts, which the builders use as is.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        prompt_style: str = "compact",
        image_dir: str = "Diagram_Visual",
        name: str = "pgps9k",
        choices_in_prompt: bool = False,  # append "Choices: ..." to the question
        choices_template: str = "\nChoices: {choices}",
        answer_format: str = "value",  # value: the number; choice_letter: A-D of the matching choice
        on_error: str = "raise",
        limit: int | None = None,
    ):
        super().__init__(name, on_error, limit)
        for option, value, choices in (
            ("answer_format", answer_format, ANSWER_FORMATS),
            ("split", split, SPLITS),
            ("prompt_style", prompt_style, PROMPT_STYLES),
        ):
            if value not in choices:
                raise ValueError(f"data.{option} must be one of {choices}, got {value!r}")
        self.root = Path(root)
        self.split = split
        self.prompt_style = prompt_style
        self.image_dir = image_dir
        self.choices_in_prompt = choices_in_prompt
        self.choices_template = choices_template
        self.answer_format = answer_format

    def _raw_records(self):
        path = self.root / f"{self.split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"no PGPS9K {self.split} split: {path.resolve()} does not exist (data.split)")
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
        meta = {
            "question": prompt,
            "facts": [verbalise_clause(c) for c in structural] + semantic,
            "structural_clauses": structural,
            "semantic_clauses": semantic,
            "answer": answer,
            "choices": choices,
            "problem_type": raw.get("type"),
        }
        if self.prompt_style in CENTRIC_PROMPTS:
            meta["centric_prompts"] = CENTRIC_PROMPTS[self.prompt_style](prompt, structural, semantic)
            meta["facts"] = [c for c in map(paper_structural_clause, structural) if c] + semantic
            prompt, target = meta["centric_prompts"]["vision_centric"], f"\\boxed{{{target}}}"
        messages = [message("user", [image_part(), text_part(prompt)]), message("assistant", [text_part(target)])]
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
