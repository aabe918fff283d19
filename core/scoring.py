"""When an answer counts as correct: the task's definition, kept beside its data.

`answers_match(prediction, target)` scores a model's free-text answer the way the modality-gap paper's released
evaluation does for PGPS9K, and still does exact matching for tasks whose answers are sentences (the synthetic
conflict task). In order:

1. Normalised exact match (`normalise_answer`): whitespace collapsed, case folded, trailing periods dropped.
2. The answer is the content of the last `\\boxed{...}` (nested braces allowed) or, without one, the whole text.
3. A numeric target (`164.317`, `\\frac{3}{4}`, `2\\sqrt{3}`, `45^\\circ`, `12 cm`) is compared as a number:
   the prediction's boxed expression, else the last number in its text, is evaluated (`\\frac`/`\\dfrac`,
   `\\sqrt`, pi, `^`, `+-*/` and implicit products, with a small parser, never `eval`); units, `\\text{...}`,
   degree and percent signs and a leading `x =` are stripped. Correct when equal or within `tolerance`
   relative error (1 % by default, inclusive).
4. A multiple-choice target (a single capital letter, `B` or `(B)`) matches the boxed letter, a bare letter,
   `(B)`, or "the answer is B".
5. Any other target matches the normalised boxed answer exactly.

That rule is the `lenient` grader. `grader(name, purpose, tolerance)` picks one by name: `lenient`, or `release`,
paper 2's released rules (`xmodal.core.release_grader`: the last `\\boxed{}` only, no box = wrong; the evaluation
adds a 1 % closeness helper, the reward none). `evaluate.grader` and `reward.correct.grader` name them.

Conflict recognition (`builder=conflict`) is decided by a judge, `judge(response, answer, counter_answer) -> bool`:
`ExactConflictJudge` (the fine-tuned conflict answer) or `FreeTextConflictJudge` (free text that says the sources
disagree or names both candidate answers, for off-the-shelf models); conf/judge/ selects one.
"""

from __future__ import annotations

import math
import re
from functools import partial
from typing import Callable

from xmodal.core.release_grader import release_eval_correct, release_reward_correct

__all__ = [
    "ExactConflictJudge",
    "FreeTextConflictJudge",
    "answers_match",
    "cut_at_end",
    "evaluate_number",
    "extract_answer",
    "grader",
    "last_boxed",
    "normalise_answer",
]


def cut_at_end(text: str, end_markers: tuple[str, ...]) -> str:
    """The text before the first end marker (end-of-turn or padding token), if any."""
    return text[: min((text.find(marker) for marker in end_markers if marker and marker in text), default=len(text))]


def normalise_answer(text: str, end_markers: tuple[str, ...] = ()) -> str:
    """The comparable form of an answer: cut at the first end marker, whitespace collapsed, case-folded, no
    trailing periods. "  The sources conflict.</s>" and "the sources conflict" compare equal."""
    return " ".join(cut_at_end(text, end_markers).split()).casefold().rstrip(". ")


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces kept; None without a closed one."""
    starts = [match.end() for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for position in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            if depth == 0:
                return text[start:position].strip()
    return None


def extract_answer(text: str) -> str:
    """The answer a response commits to: its last boxed content, else the whole text."""
    boxed = last_boxed(text)
    return text.strip() if boxed is None else boxed


# --- numbers -----------------------------------------------------------------------------------------------------

_UNIT_GROUP = r"\\(?:text|mathrm|textrm|mbox|operatorname)\s*\{[^{}]*\}(?:\^\{?\d\}?)?"
_DEGREE = r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°"
_LATEX_SPACING = r"\\left|\\right|\\[,;:! ]|\\quad|\\qquad|\$|~"
# A trailing unit word, possibly squared or cubed ("cm^2", "square units", "degrees.").
_TRAILING_WORD = re.compile(r"\s*(?<![\\a-zA-Z])[a-zA-Z]+(?:\^\{?\d\}?)?\.?\s*$")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_LAST_NUMBER = re.compile(r"-?(?:\d+(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
_TOKEN = re.compile(r"\s*(\\frac|\\sqrt|\\pi|\d+(?:\.\d*)?|\.\d+|[-+*/^(){}\[\]])")


def _clean_expression(text: str) -> str:
    """LaTeX answer -> the arithmetic the parser reads: units, degrees, spacing and `x =` dropped."""
    text = re.sub(_UNIT_GROUP, "", text)
    text = re.sub(_DEGREE, "", text)
    text = re.sub(_LATEX_SPACING, "", text)
    text = text.replace("√", r"\sqrt").replace("π", r"\pi").replace(r"\%", "").replace("%", "")
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\(?:cdot|times)", "*", text).replace(r"\div", "/").replace("×", "*")
    text = re.sub(r"(?<![\\a-zA-Z])(sqrt|pi)\b", r"\\\1", text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # thousands separators
    text = text.rsplit("=", 1)[-1]  # "x = 5", "AB = 2\sqrt{3}"
    while (stripped := _TRAILING_WORD.sub("", text)) != text and stripped.strip():
        text = stripped
    return text.strip()


class _Parser:
    """Recursive descent over +, -, *, /, ^, implicit products, braces/parentheses, \\frac, \\sqrt and \\pi."""

    def __init__(self, text: str):
        self.tokens: list[str] = []
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:
                if text[position:].strip():
                    raise ValueError(f"cannot read {text[position:]!r}")
                break
            self.tokens.append(match.group(1))
            position = match.end()
        self.index = 0

    def parse(self) -> float:
        value = self.sum()
        if self.index != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.index]!r}")
        return value

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise ValueError(f"expected {expected or 'more'}, got {token!r}")
        self.index += 1
        return token

    def sum(self) -> float:
        value = self.product()
        while self.peek() in ("+", "-"):
            value = value + self.product() if self.take() == "+" else value - self.product()
        return value

    def product(self) -> float:
        value = self.signed()
        while True:
            token = self.peek()
            if token in ("*", "/"):
                self.take()
                value = value * self.signed() if token == "*" else value / self.signed()
            elif token is not None and (token in ("\\frac", "\\sqrt", "\\pi", "(", "{") or _NUMBER.fullmatch(token)):
                value = value * self.power()  # implicit product: 2\sqrt{3}, 3\pi, 2(1+1)
            else:
                return value

    def signed(self) -> float:
        if self.peek() in ("+", "-"):
            return self.signed() if self.take() == "+" else -self.signed()
        return self.power()

    def power(self) -> float:
        base = self.primary()
        if self.peek() == "^":
            self.take()
            result = base ** self.signed()
            if isinstance(result, complex):
                raise ValueError("complex power")
            return result
        return base

    def group(self) -> float:
        """A braced argument, or a single primary (`\\sqrt 2`, `\\frac{1}2`)."""
        if self.peek() == "{":
            self.take("{")
            value = self.sum()
            self.take("}")
            return value
        return self.primary()

    def primary(self) -> float:
        token = self.take()
        if token == "\\pi":
            return math.pi
        if token == "\\frac":
            numerator = self.group()
            return numerator / self.group()
        if token == "\\sqrt":
            degree = 2.0
            if self.peek() == "[":
                self.take("[")
                degree = self.sum()
                self.take("]")
            radicand = self.group()
            if radicand < 0:
                raise ValueError("root of a negative number")
            return radicand ** (1.0 / degree)
        closing = {"(": ")", "{": "}", "[": "]"}.get(token)
        if closing:
            value = self.sum()
            self.take(closing)
            return value
        if _NUMBER.fullmatch(token):
            return float(token)
        raise ValueError(f"unexpected {token!r}")


def evaluate_number(text: str) -> float | None:
    """The value of a numeric answer (`\\frac{3}{4}`, `2\\sqrt{3}`, `12\\pi`, `45^\\circ`, `x = 1,200 cm`), or None
    when it is not one. Only arithmetic is read; nothing is executed."""
    expression = _clean_expression(text)
    if not expression:
        return None
    try:
        value = _Parser(expression).parse()
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _predicted_number(prediction: str) -> float | None:
    boxed = last_boxed(prediction)
    if boxed is not None:
        return evaluate_number(boxed)
    numbers = _LAST_NUMBER.findall(prediction)
    return float(numbers[-1].replace(",", "")) if numbers else None


def _within(value: float, target: float, tolerance: float) -> bool:
    # The relative factor absorbs float error at the edge, so exactly 1 % off still counts.
    return value == target or abs(value - target) <= tolerance * abs(target) * (1 + 1e-9)


# --- multiple choice ---------------------------------------------------------------------------------------------

_TEXT_WRAPPER = r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}"
_LETTER = re.compile(r"\(?([A-Z])\)?\.?")
# "The answer is B", "Answer: (C)"; only capital letters, so "the answer is a square" names no choice.
_ANSWER_IS_LETTER = re.compile(r"(?i:answer)\s*(?:(?i:is)\s*)?:?\s*\(?([A-Z])\)?(?![A-Za-z])")


def _choice_letter(answer: str) -> str | None:
    """The letter a bare choice names: "B", "(B)" and "B." all name B."""
    match = _LETTER.fullmatch(answer.strip())
    return match.group(1) if match else None


def _predicted_letter(prediction: str) -> str | None:
    boxed = last_boxed(prediction)
    if boxed is not None:
        return _choice_letter(re.sub(_TEXT_WRAPPER, r"\1", boxed))
    letter = _choice_letter(prediction)
    if letter:
        return letter
    stated = _ANSWER_IS_LETTER.findall(prediction)
    return stated[-1] if stated else None


# --- the rule ----------------------------------------------------------------------------------------------------


def answers_match(prediction: str, target: str, tolerance: float = 0.01) -> bool:
    """Whether `prediction` (a model's whole response) gives the answer `target` (the reference).

    See the module docstring for the rules. `tolerance` is the relative error a numeric answer may have
    (0.01 = within 1 %, inclusive; 0 = exactly equal). A response without an answer is wrong.

    >>> answers_match(r"so the area is \\boxed{\\frac{1}{2}}", "0.5")
    True
    >>> answers_match("The angle is 45°.", "45.000")
    True
    >>> answers_match(r"\\boxed{2\\sqrt{3}}", "3.4641")
    True
    >>> answers_match(r"\\boxed{(B)}", "B")
    True
    >>> answers_match("The sources agree. 4", "The sources agree. 3")
    False
    """
    if normalise_answer(prediction) == normalise_answer(target):
        return True
    reference = extract_answer(target)
    target_value = evaluate_number(reference)
    if target_value is not None:
        value = _predicted_number(prediction)
        return value is not None and _within(value, target_value, tolerance)
    target_letter = _choice_letter(reference)
    if target_letter is not None:
        return _predicted_letter(prediction) == target_letter
    return normalise_answer(extract_answer(prediction)) == normalise_answer(reference)


GRADERS = ("lenient", "release")
GRADER_PURPOSES = ("evaluate", "reward")


def grader(name: str, purpose: str = "evaluate", tolerance: float = 0.01) -> Callable[[str, str], bool]:
    """`correct(response, target) -> bool` by name: `lenient` (`answers_match` with `tolerance`, for both
    purposes) or `release` (the released evaluation's rule for `evaluate`, the released reward's for `reward`;
    `tolerance` does not apply: the release fixes it)."""
    if name not in GRADERS:
        raise ValueError(f"grader must be one of {GRADERS}, got {name!r}")
    if purpose not in GRADER_PURPOSES:
        raise ValueError(f"grader purpose must be one of {GRADER_PURPOSES}, got {purpose!r}")
    if name == "lenient":
        return partial(answers_match, tolerance=tolerance)
    return release_eval_correct if purpose == "evaluate" else release_reward_correct


# --- conflict recognition ----------------------------------------------------------------------------------------


class ExactConflictJudge:
    """A response recognises the conflict when it is the trained conflict answer (`answers_match`, e.g.
    "The sources conflict."): the format of models fine-tuned with `builder=conflict`. With a `reading` (the
    builder's `reading_template` the model was trained with), a response that reads the pieces first counts when
    its last sentence is that answer: "3 and 5. The sources conflict."."""

    def __init__(self, answer: str = "The sources conflict.", reading: str = ""):
        self.answer = answer
        self.reading = reading

    def __call__(self, response: str, answer: str | None = None, counter_answer: str | None = None) -> bool:
        if answers_match(response, self.answer):
            return True
        return bool(self.reading) and normalise_answer(response).endswith(". " + normalise_answer(self.answer))


# Word starts that say the sources disagree ("contradict" also finds "contradictory"), and the words that negate them.
DISAGREEMENT_PHRASES = (
    "conflict", "disagree", "contradict", "inconsistent", "inconsistency", "discrepanc", "mismatch", "differ",
    "do not agree", "don't agree", "does not agree", "doesn't agree",
)
NEGATIONS = ("no", "not", "never", "without", "neither", "nor", "n't")


class FreeTextConflictJudge:
    """A response recognises the conflict when it says the sources disagree, or names both candidate answers.

    For off-the-shelf models that answer in their own words (the cross-modal conflict paper scores those).
    "Says they disagree": one of `phrases` (case-insensitive, as a word start: "contradict" also finds
    "contradictory") with none of `negations` among the `negation_window` words before it, so "the sources do
    not conflict" and "there is no contradiction" do not count. "Names both": `answer` and `counter_answer`
    both occur as whole words (only when `both_answers` is on and both are given).
    """

    def __init__(
        self,
        phrases: list[str] | None = None,
        negations: list[str] | None = None,
        negation_window: int = 3,
        both_answers: bool = True,
    ):
        phrases = DISAGREEMENT_PHRASES if phrases is None else phrases
        negations = NEGATIONS if negations is None else negations
        self.phrases = [re.compile(r"(?<![a-z])" + re.escape(phrase.casefold())) for phrase in phrases]
        self.negations = {negation.casefold() for negation in negations}
        self.negation_window = negation_window
        self.both_answers = both_answers

    def __call__(self, response: str, answer: str | None = None, counter_answer: str | None = None) -> bool:
        text = response.casefold()
        for phrase in self.phrases:
            for match in phrase.finditer(text):
                if not self._negated(text[: match.start()]):
                    return True
        if self.both_answers and answer and counter_answer:
            return all(_names(text, candidate) for candidate in (answer, counter_answer))
        return False

    def _negated(self, before: str) -> bool:
        # "n't" is split off so that "don't" and "doesn't" read as negations.
        words = re.findall(r"[a-z]+(?=n't)|n't|[a-z]+", before)[-self.negation_window :] if self.negation_window else []
        return any(word in self.negations for word in words)


def _names(text: str, candidate: str) -> bool:
    """Whether `candidate` occurs in the case-folded `text` as a whole word or number."""
    return re.search(r"(?<![\w.])" + re.escape(candidate.casefold()) + r"(?![\w]|\.\d)", text) is not None
