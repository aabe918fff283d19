"""Edges of xmodal.core.scoring that the hand-checked cases of test_scoring.py left open (found by mutation testing,
docs/testing.md): where an answer is cut, bare choice letters, and the conflict judges' defaults."""

from __future__ import annotations

import pytest

from xmodal.core.scoring import ExactConflictJudge, FreeTextConflictJudge, answers_match, cut_at_end, evaluate_number


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
