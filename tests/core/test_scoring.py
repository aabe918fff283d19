"""xmodal.core.scoring.answers_match against hand-checked cases (the values in comments were computed by hand)."""

from __future__ import annotations

import doctest

import pytest

from xmodal.core import scoring
from xmodal.core.scoring import (
    ExactConflictJudge,
    FreeTextConflictJudge,
    answers_match,
    evaluate_number,
    last_boxed,
    normalise_answer,
)


@pytest.mark.parametrize(
    "prediction,target,correct",
    [
        # boxed answers: the last box counts, earlier boxes and numbers do not
        (r"First \boxed{3}, no wait: \boxed{14.9}", "14.900", True),
        (r"\boxed{14.9} was wrong, it is \boxed{3}", "14.900", False),
        (r"<think>AB = 7, so 7 + 8 = 15</think> The area is \boxed{164.3}", "164.317", True),
        # plain text: the last number
        ("The perimeter is 56 units.", "56.000", True),
        ("AB = 7 and the answer is 56", "56.000", True),
        ("56 is wrong; the answer is 57", "56.000", False),
        ("It is 1,847.26 square units", "1847.256", True),
        # fractions: 3/4 = 0.75; 1/3 = 0.333...
        (r"\boxed{\frac{3}{4}}", "0.750", True),
        (r"\boxed{\dfrac{1}{3}}", "0.333", True),
        (r"\boxed{\tfrac{2}{3}}", "0.5", False),
        (r"\boxed{\frac{1}{2}}", r"\frac{2}{4}", True),
        # roots and pi: 2 sqrt(3) = 3.4641; sqrt(2)/2 = 0.7071; 4 pi = 12.566; cube root of 8 = 2
        (r"\boxed{2\sqrt{3}}", "3.464", True),
        (r"\boxed{\frac{\sqrt{2}}{2}}", "0.707", True),
        (r"\boxed{4\pi}", "12.566", True),
        (r"\boxed{\sqrt[3]{8}}", "2.000", True),
        (r"\boxed{\sqrt 2}", "1.414", True),
        (r"\boxed{4\pi}", "4.000", False),
        # degrees and units stripped
        (r"\boxed{45^\circ}", "45.000", True),
        (r"\boxed{45^{\circ}}", "45.000", True),
        ("The angle measures 45°.", "45.000", True),
        (r"\boxed{12\text{ cm}^2}", "12.000", True),
        (r"\boxed{x = 5}", "5.000", True),
        (r"\boxed{m \angle ABC = 30}", "30.000", True),
        # the 1 % tolerance: 100 * 1.0099 is within, 100 * 1.0101 is not, in both directions
        (r"\boxed{100.99}", "100.000", True),
        (r"\boxed{101.01}", "100.000", False),
        (r"\boxed{99.01}", "100.000", True),
        (r"\boxed{98.99}", "100.000", False),
        (r"\boxed{101}", "100.000", True),  # exactly 1 % off counts (inclusive)
        (r"\boxed{0.001}", "0", False),  # zero targets need an exact answer
        (r"\boxed{-0}", "0", True),
        (r"\boxed{-5}", "5.000", False),
        # multiple-choice letters
        (r"\boxed{B}", "B", True),
        (r"\boxed{(B)}", "B", True),
        (r"\boxed{\text{C}}", "C", True),
        ("The answer is (C).", "C", True),
        ("Answer: D", "D", True),
        (r"\boxed{B}", "C", False),
        ("the answer is a square", "A", False),
        # nested braces inside the box
        (r"\boxed{\frac{\sqrt{3}}{2}}", "0.866", True),
        (r"\boxed{\frac{1}{\frac{1}{2}}}", "2", True),
        # no answer at all
        ("I cannot tell from the figure.", "14.900", False),
        ("", "14.900", False),
        (r"\boxed{}", "14.900", False),
        (r"\boxed{14.9", "14.900", True),  # an unclosed box is no box: the last number counts
        # non-numeric answers (the synthetic conflict task): normalised exact match
        ("The Sources Conflict.", "The sources conflict.", True),
        ("the sources  agree.\n 3", "The sources agree. 3", True),
        ("The sources agree. 4", "The sources agree. 3", False),
        (r"\boxed{The sources conflict}", "The sources conflict.", True),
        ("77", "7", False),
    ],
)
def test_answers_match_hand_checked_cases(prediction, target, correct):
    assert answers_match(prediction, target) is correct


def test_tolerance_is_relative_and_configurable():
    assert answers_match(r"\boxed{1.05}", "1", tolerance=0.05)
    assert not answers_match(r"\boxed{1.05}", "1")
    assert not answers_match(r"\boxed{100.5}", "100", tolerance=0)
    assert answers_match(r"\boxed{\frac{1}{4}}", "0.25", tolerance=0)


@pytest.mark.parametrize(
    "text,value",
    [
        (r"\left(\frac{1}{2}\right)^2", 0.25),
        (r"3 \cdot 4 - 2", 10.0),
        (r"2(1+1)", 4.0),
        (r"\frac{1}{2}\pi", 0.5 * 3.141592653589793),
        ("√16", 4.0),
        ("15 sq cm", 15.0),
        ("12%", 12.0),
    ],
)
def test_evaluate_number_reads_arithmetic(text, value):
    assert evaluate_number(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "text",
    ["__import__('os').system('true')", r"\frac{1}{0}", "2^99999", r"\sqrt{-4}", "(-8)^(1/3)", "B", "a + b", "1 +"],
)
def test_evaluate_number_refuses_what_is_not_arithmetic(text):
    assert evaluate_number(text) is None


def test_last_boxed_keeps_nested_braces():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{\sqrt{2}}}.") == r"\frac{1}{\sqrt{2}}"
    assert last_boxed("no box") is None


def test_docstring_examples_hold():
    assert doctest.testmod(scoring).failed == 0


@pytest.mark.parametrize(
    "response,normalised",
    [
        ("  7 </s><pad>", "7"),
        ("7<|im_end|>\n<|im_start|>user", "7"),
        ("The Sources  Conflict.\n", "the sources conflict"),
        (" The sources agree. 3.5. ", "the sources agree. 3.5"),  # inner periods stay
    ],
)
def test_normalise_answer_cuts_at_the_first_end_marker(response, normalised):
    assert normalise_answer(response, end_markers=("</s>", "<pad>", "<|im_end|>")) == normalised


@pytest.mark.parametrize(
    "response,recognised",
    [
        ("The sources conflict.", True),
        ("The two passages are contradictory: one says 3, the other 5.", True),
        ("There is a discrepancy between the image and the text.", True),
        ("The image and the text disagree about A.", True),
        ("They don't agree with each other.", True),  # "do not agree" is itself the disagreement
        ("Evidence 1 gives 3 while evidence 2 gives 5.", True),  # names both candidate answers
        ("The sources do not conflict; A is 3.", False),
        ("There is no contradiction here. The answer is 3.", False),
        ("I don't see any inconsistency: 3.", False),
        ("The sources agree. 3", False),
        ("A is 3.", False),
        ("A is 35 or 53.", False),  # 3 and 5 only inside other numbers
        ("", False),
    ],
)
def test_free_text_judge_hand_checked_cases(response, recognised):
    assert FreeTextConflictJudge()(response, answer="3", counter_answer="5") is recognised


def test_free_text_judge_options():
    naming_both = "Evidence 1 gives 3 while evidence 2 gives 5."
    assert not FreeTextConflictJudge(both_answers=False)(naming_both, "3", "5")
    assert not FreeTextConflictJudge()(naming_both)  # without the candidates only the wording counts
    assert FreeTextConflictJudge(phrases=["clash"])("The passages clash.")
    assert not FreeTextConflictJudge(phrases=["clash"])("The sources conflict.")
    assert FreeTextConflictJudge(negation_window=0)("The sources do not conflict.")


def test_exact_judge_accepts_only_the_trained_conflict_answer():
    judge = ExactConflictJudge("The sources conflict.")
    assert judge(" the sources conflict") and judge("The Sources Conflict.")
    assert not judge("The sources disagree.") and not judge("The sources agree. 3")
