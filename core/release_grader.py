r"""Paper 2's released grading rules (UCSB-NLP-Chang/Bridging-Modality-Gap), rewritten here from their description.

The release scores a response by the content of its LAST `\boxed{`; a response without one, or whose last box
is never closed (a truncated response), has no answer and is wrong, whatever numbers its text holds. The answer
is then compared with the reference in two ways:

- `grade_answer` (the release's reward and evaluation both use it; it comes from the `mathruler` package, a
  PRM800K-style grader): equal after normalisation (spacing, `\left`/`\right`, `\dfrac`, degree signs, percent
  signs, `\text{}` wrappers, trailing unit words, a short `x =` in front, thousands separators, `3.000` -> `3`),
  else symbolically equal (here: math-verify over sympy). Two guards come first, as in that grader: an integer
  and a non-integer are never equal (`\frac{10}{2}` is not `5`), and two plain fractions `a/b` must be written
  alike (`2/4` is not `1/2`). No tolerance: `2\sqrt{3}` is not `3.464`.
- `is_close_enough` (the evaluation only): the answer read as Python arithmetic in which `\sqrt{x}` is a square
  root and a number or `)` before `(` or a root multiplies (`2\sqrt{3}`, `3(1+2)`), against the reference read
  as a plain float; correct within 1 % relative error (both 0 counts; a reference of 0 otherwise never matches).
  No other LaTeX is read (`\frac{1}{2}`, `12\pi` and `45^\circ` are not arithmetic there). The arithmetic is
  evaluated over a whitelist of syntax-tree nodes with Python's own operators, never `eval`; `^` therefore is
  Python's exclusive or on integers, as in the release.

`release_eval_correct` = last box (degree sign `°` removed) and (`grade_answer` or `is_close_enough`);
`release_reward_correct` = last box and `grade_answer` (the reward's correctness term).
"""

from __future__ import annotations

import ast
import logging
import math
import operator
import re

from math_verify import parse, verify

__all__ = ["grade_answer", "is_close_enough", "release_boxed", "release_eval_correct", "release_reward_correct"]

_BOX_OPENING = "\\boxed{"
# math-verify warns on every call made without its signal-based timeouts (which only the main thread may set).
logging.getLogger("math_verify").setLevel(logging.ERROR)


def release_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{` (nested braces kept, stripped); None when there is none or it never closes."""
    start = text.rfind(_BOX_OPENING)
    if start < 0:
        return None
    depth = 0
    content_start = start + len(_BOX_OPENING)
    for position in range(content_start, len(text)):
        character = text[position]
        if character == "{":
            depth += 1
        elif character == "}":
            if depth == 0:
                return text[content_start:position].strip()
            depth -= 1
    return None


# --- grade_answer --------------------------------------------------------------------------------------------------

# Unit words the normaliser drops after a number (singular, plural, squared: "cm^2", "units", "degrees").
_UNIT_WORDS = (
    "degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month", "year",
    "foot", "feet", "inch", "yard", "unit", "m", "km", "mm",
)
_TRAILING_UNIT = re.compile(r"(?<=[\d}\s])\s*(?:" + "|".join(_UNIT_WORDS) + r")(?:e?s)?(?:\^\{?\d\}?)?\s*$")
_DEGREE_SIGN = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°")
_SPACING = re.compile(r"\\left|\\right|\\[,;:! ]|\\quad|\\qquad|\$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}")
_INTEGER = re.compile(r"-?\d+")
_PLAIN_FRACTION = re.compile(r"-?\d+/\d+")
_FLOAT = re.compile(r"-?(?:\d+\.\d*|\.\d+|\d+)")


def _normal_form(answer: str) -> str:
    """The comparable spelling of an answer (see the module docstring)."""
    text = answer.strip()
    text = _SPACING.sub("", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = _DEGREE_SIGN.sub("", text)
    text = text.replace("\\%", "").replace("%", "")
    text = _TEXT_WRAPPER.sub(r"\1", text)
    while (stripped := _TRAILING_UNIT.sub("", text)) != text and stripped.strip():
        text = stripped
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0].strip()) <= 2:  # "x = 5", "AB=5"
        text = sides[1]
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"\s+", "", text).lower()
    while text.startswith("{") and text.endswith("}") and _balanced(text[1:-1]):
        text = text[1:-1]
    text = re.sub(r"\\frac\{?(-?\d+)\}?\{?(\d+)\}?$", r"\1/\2", text)  # a bare \frac{a}{b}: the plain a/b
    if _FLOAT.fullmatch(text) and "." in text and float(text).is_integer():
        text = str(int(float(text)))
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for character in text:
        depth += {"{": 1, "}": -1}.get(character, 0)
        if depth < 0:
            return False
    return depth == 0


def _symbolically_equal(given: str, reference: str) -> bool:
    # parsing_timeout/timeout_seconds None: math-verify's timeouts use signals, which only the main thread may set.
    gold = parse(f"${reference}$", parsing_timeout=None)
    predicted = parse(f"${given}$", parsing_timeout=None)
    return bool(gold and predicted and verify(gold, predicted, timeout_seconds=None))


def grade_answer(given: str | None, reference: str) -> bool:
    """Whether `given` (an extracted answer) equals `reference` as the release's grader decides; no tolerance."""
    if given is None:
        return False
    given_form, reference_form = _normal_form(given), _normal_form(reference)
    if given_form == reference_form:
        return True
    if not given_form:
        return False
    if bool(_INTEGER.fullmatch(given_form)) != bool(_INTEGER.fullmatch(reference_form)):
        return False
    if _PLAIN_FRACTION.fullmatch(given_form) and _PLAIN_FRACTION.fullmatch(reference_form):
        return False  # written differently (the forms differ), so not equal for that grader
    return _symbolically_equal(given_form, reference_form)


# --- is_close_enough -----------------------------------------------------------------------------------------------

_OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.USub: operator.neg, ast.UAdd: operator.pos,
}


def _arithmetic(node: ast.AST):
    """The value of a whitelisted arithmetic syntax tree; ValueError for anything else."""
    if isinstance(node, ast.Expression):
        return _arithmetic(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_arithmetic(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt" and len(node.args) == 1:
        return math.sqrt(_arithmetic(node.args[0]))
    raise ValueError(f"not arithmetic: {ast.dump(node)}")


def _as_arithmetic(answer: str) -> str:
    """`2\\sqrt{3}` -> `2*sqrt(3)`; a number or `)` before `(` or a root multiplies (the release's rewriting)."""
    expression = re.sub(r"\\sqrt\{([^}]+)\}", r"sqrt(\1)", answer)
    expression = re.sub(r"(\d)(sqrt)", r"\1*\2", expression)
    expression = re.sub(r"(\d)\s*\(", r"\1*(", expression)
    return re.sub(r"\)(\s*(?:\d|sqrt))", r")*\1", expression)


def is_close_enough(given: str | None, reference: str) -> bool:
    """Whether the arithmetic `given` is within 1 % of the plain number `reference` (the release's helper)."""
    if given is None:
        return False
    try:
        value = _arithmetic(ast.parse(_as_arithmetic(given), mode="eval"))
        target = float(reference)
        if value == target == 0:
            return True
        return target != 0 and abs(value - target) / abs(target) <= 0.01
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return False


# --- the two uses --------------------------------------------------------------------------------------------------


def _reference(target: str) -> str:
    """The reference answer: a boxed target (`data.prompt_style=paper`) is read as its box's content."""
    boxed = release_boxed(target)
    return target.strip() if boxed is None else boxed


def release_eval_correct(response: str, target: str) -> bool:
    """The released evaluation's verdict on one response."""
    answer = release_boxed(response)
    if answer is None:
        return False
    answer = answer.replace("°", "")
    reference = _reference(target)
    return grade_answer(answer, reference) or is_close_enough(answer, reference)


def release_reward_correct(response: str, target: str) -> bool:
    """The released reward's correctness term on one response: boxed answer, `grade_answer`, no tolerance."""
    return grade_answer(release_boxed(response), _reference(target))
