"""xmodal-eval scores each answer with the grader `evaluate.grader` names (lenient by default, release for paper 2)."""

from __future__ import annotations

import pytest

from xmodal.trainers.evaluation.answers import EvalItem, GenerationSettings, score_item

ITEM = EvalItem("p1", "vision_centric", [], [], target=r"\boxed{14.9}")
ANSWERS = ["<think>WX = WZ = 14.9", r"<think>WX = WZ</think> \boxed{14.95}", r"\boxed{\frac{149}{10}}"]


@pytest.mark.parametrize("grader,correct", [("lenient", [True, True, True]), ("release", [False, True, True])])
def test_each_answer_is_scored_by_the_named_grader(grader, correct):
    prediction = score_item(ITEM, "prompt", ANSWERS, True, GenerationSettings(grader=grader), judge=None)
    assert prediction.correct == correct


def test_an_unknown_grader_is_refused():
    with pytest.raises(ValueError, match="evaluate.grader must be one of"):
        GenerationSettings(grader="strict")
