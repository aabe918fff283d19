"""Edges of xmodal.core.scoring that the hand-checked cases of test_scoring.py left open (found by mutation testing,
docs/testing.md): where an answer is cut, bare choice letters, and the conflict judges' defaults."""

from __future__ import annotations

from xmodal.core.scoring import ExactConflictJudge, FreeTextConflictJudge, answers_match, cut_at_end


def test_an_answer_is_cut_at_the_first_end_marker_not_the_last():
    assert cut_at_end("12</s>padding</s>", ("</s>",)) == "12"
    assert cut_at_end("12<pad><pad>", ("</s>", "<pad>")) == "12"  # whichever marker comes first
    assert cut_at_end("12", ("</s>",)) == "12"


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
