"""Edges of xmodal.core.scoring that the hand-checked cases of test_scoring.py left open (found by mutation testing,
docs/testing.md): where an answer is cut, bare choice letters, the conflict judges' defaults, and the graders by name."""

from __future__ import annotations

import math

import pytest

from xmodal.core.scoring import (
    ExactConflictJudge,
    FreeTextConflictJudge,
    answers_match,
    cut_at_end,
    evaluate_number,
    grader,
)


def test_an_answer_is_cut_at_the_first_end_marker_not_the_last():
    assert cut_at_end("12</s>padding</s>", ("</s>",)) == "12"
    assert cut_at_end("12<pad><pad>", ("</s>", "<pad>")) == "12"  # whichever marker comes first
    assert cut_at_end("12", ("</s>",)) == "12"


@pytest.mark.parametrize("text,value", [
    ("6/4", 1.5),
    (r"2\frac{1}{4}", 0.5),  # implicit product with a fraction
    ("2{3}", 6.0),  # and with a braced group
    ("+5", 5.0),  # unary plus
    ("-+5", -5.0),
    ("{3}+1", 4.0),
    ("[3+1]", 4.0),
    (r"\sqrt[3]{8}", 2.0),
    (r"\sqrt{0}", 0.0),  # the root of zero is zero, not a refusal
    (r"\sqrt[3}{8}", None),  # a malformed degree is no number
    ("(-8)^{0.5}", None),  # nor is a complex power
    ("(3+4]", None),  # nor are brackets that do not pair
    (r"\frac{3+4]{2}", None),
    (r"90^\circ - 35^\circ", 55.0),  # degrees and units are dropped between terms too, not only at the end
    (r"3\text{ cm} \times 4\text{ cm}", 12.0),
    ("12π", 12 * math.pi),  # the Unicode and LaTeX spellings of pi, products, quotients and percent
    ("3×4", 12.0),
    (r"12 \div 4", 3.0),
    (r"50\%", 50.0),
    ("50%", 50.0),
    (r"50\% - 10\%", 40.0),  # percent signs are dropped between terms too
    ("50% - 10%", 40.0),
    ("12 pi", 12 * math.pi),  # bare words: "12 pi" is 12 pi, not 12 followed by a unit word
    ("2sqrt(3)", 2 * 3 ** 0.5),
    ("12 Xpi", 12.0),  # ...but a word that merely ends in "pi" (after a capital too) is a unit word, dropped
    ("1,200", 1200.0),  # a thousands separator
    ("AB = CD = 5", 5.0),  # the value after the last "="
    ("10^{308} * 10", None),  # beyond float: no number, not inf
])
def test_arithmetic_edges_read_as_hand_computed(text, value):
    assert evaluate_number(text) == value


def test_a_bare_choice_letter_names_that_choice():
    assert answers_match("(B)", "B") and answers_match("B.", "(B)")
    assert not answers_match("(C)", "B")


def test_the_exact_judge_expects_the_trained_conflict_answer_by_default():
    judge = ExactConflictJudge()
    assert judge("The sources conflict.") and judge("the sources conflict")
    assert not judge("The sources agree. 7")


def test_the_exact_judge_accepts_a_reading_before_the_answer_only_when_trained_with_one():
    read_first = "Evidence 1 gives 3, evidence 2 gives 5. The sources conflict."
    assert not ExactConflictJudge()(read_first)
    judge = ExactConflictJudge(reading="Evidence 1 gives {first}, evidence 2 gives {second}. ")
    assert judge(read_first) and judge("The sources conflict.")
    assert not judge("Evidence 1 gives 3, evidence 2 gives 3. The sources agree. 3")
    assert not judge("The sources conflict. Evidence 1 gives 3")  # the answer must be the last sentence
    assert not judge("Evidence 1 gives 3, the sources conflict")  # ... a sentence of its own


def test_the_free_text_judge_defaults_read_disagreement_and_its_negation():
    judge = FreeTextConflictJudge()
    assert judge("The two sources contradict each other.")
    assert not judge("The sources do not conflict.")  # a default negation within the default window of 3 words
    assert judge("This is not a simple plain conflict.")  # "not" is 4 words before: outside the window
    assert not judge("I am indifferent to the answer.")  # a phrase counts only as a word start ("differ")
    assert judge("It is either 7 or 9.", answer="7", counter_answer="9")  # names both answers


def test_the_free_text_judge_reads_its_own_negations_when_given():
    judge = FreeTextConflictJudge(negations=["hardly"])
    assert not judge("The sources hardly conflict.")
    assert judge("The sources do not conflict.")  # "not" is no negation of this judge


def test_a_grader_is_picked_by_name_purpose_and_tolerance():
    # By hand: 101 is 1 % off 100, 102 is 2 %, 100.05 is 0.05 %, 100.5 is 0.5 %.
    lenient = grader("lenient")  # the defaults: to evaluate, within 1 %
    assert lenient(r"\boxed{101}", "100") and not lenient(r"\boxed{102}", "100")
    assert lenient("The answer is 14.9", "14.9")  # lenient reads an unboxed answer; the release does not
    strict = grader("lenient", "reward", tolerance=0.001)
    assert strict(r"\boxed{100.05}", "100") and not strict(r"\boxed{100.5}", "100")
    release_evaluation, release_reward = grader("release"), grader("release", "reward")
    assert not release_evaluation("The answer is 14.9", "14.9")
    assert release_evaluation(r"\boxed{101}", "100") and grader("release", "evaluate")(r"\boxed{101}", "100")
    assert not release_reward(r"\boxed{101}", "100") and release_reward(r"\boxed{100}", "100")  # no tolerance


def test_an_unknown_grader_or_purpose_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"^grader must be one of \('lenient', 'release'\), got 'strict'$"):
        grader("strict")
    with pytest.raises(ValueError, match=r"^grader purpose must be one of \('evaluate', 'reward'\), got 'train'$"):
        grader("release", "train")
