r"""Paper 2's released grading rules by name (`grader("release", ...)`) against a table of cases judged by hand from the
release's code (eval/pgps9k/eval.py: last `\boxed{` content, `°` removed, `grade_answer(ans, gt) or
is_close_enough(ans, gt)`; verl/customized_reward_geo9k.py: `grade_answer(boxed, gt)`, no tolerance), and the
`lenient` rule kept beside it."""

from __future__ import annotations

import pytest

from xmodal.core.release_grader import grade_answer, is_close_enough, release_boxed
from xmodal.core.scoring import grader

# (response, reference, released evaluation, released reward). Values computed by hand: 2 sqrt(3) = 3.4641;
# sqrt(3)/2 = 0.8660; 12 pi = 37.699; 3/4 = 0.75.
RELEASE_TABLE = [
    # boxed: the content of the last box is the answer
    (r"<think>WZ = WX</think> so \boxed{14.9}", "14.900", True, True),
    (r"\boxed{3} no, wait: \boxed{14.9}", "14.9", True, True),
    (r"\boxed{14.9} no, wait: \boxed{3}", "14.9", False, False),
    # no box: wrong, even when the last number is the answer
    ("<think>WZ = WX = 14.9</think> The answer is 14.9", "14.9", False, False),
    # truncated: the last box never closes, so there is no answer (an earlier closed box does not count)
    (r"\boxed{3} hmm, the answer is \boxed{14.9", "14.9", False, False),
    (r"<think>so WX = 14.9", "14.9", False, False),
    # nested braces
    (r"\boxed{\frac{3}{4}}", "0.75", True, True),
    (r"\boxed{{14.9}}", "14.9", True, True),
    # fractions: symbolic equality; an integer reference is never matched by a non-integer spelling
    (r"\boxed{\dfrac{3}{4}}", "0.750", True, True),
    (r"\boxed{\frac{10}{2}}", "5", False, False),
    (r"\boxed{2/4}", "1/2", False, False),
    # roots: exact symbolic equality in both; the 1 % helper (evaluation only) evaluates square roots
    (r"\boxed{\sqrt{12}}", r"2\sqrt{3}", True, True),
    (r"\boxed{2\sqrt{3}}", "3.464", True, False),
    (r"\boxed{2(\sqrt{3})}", "3.464", True, False),
    (r"\boxed{\frac{\sqrt{3}}{2}}", "0.866", False, False),  # \frac is not arithmetic for the helper
    # pi: symbolic when the reference is symbolic; never within 1 % (the helper does not read \pi)
    (r"\boxed{12\pi}", r"12\pi", True, True),
    (r"\boxed{12\pi}", "37.699", False, False),
    # degrees: stripped by the grader's normalisation (^\circ) and by the evaluation (°)
    (r"\boxed{45^\circ}", "45", True, True),
    (r"\boxed{45^{\circ}}", "45.000", True, True),
    (r"\boxed{45°}", "45", True, True),
    # units: trailing unit words and \text{} wrappers dropped; "x =" in front dropped
    (r"\boxed{12 cm}", "12", True, True),
    (r"\boxed{12\text{ units}}", "12", True, True),
    (r"\boxed{x = 5}", "5.000", True, True),
    # within 1 %: evaluation only (101 vs 100 is exactly 1 %; 102 is 2 %)
    (r"\boxed{101}", "100", True, False),
    (r"\boxed{102}", "100", False, False),
    (r"\boxed{5.04}", "5.000", True, False),
    # symbolic
    (r"\boxed{2x+3}", "3+2x", True, True),
    (r"\boxed{x^2-1}", "(x-1)(x+1)", True, True),
    (r"\boxed{2x+4}", "3+2x", False, False),
    # a boxed target (data.prompt_style=paper) is read as its box's content
    (r"\boxed{14.9}", r"\boxed{14.9}", True, True),
]


@pytest.mark.parametrize("response,reference,evaluation,reward", RELEASE_TABLE)
def test_release_graders_decide_as_the_release(response, reference, evaluation, reward):
    assert grader("release", "evaluate")(response, reference) is evaluation
    assert grader("release", "reward")(response, reference) is reward


@pytest.mark.parametrize(
    "response,reference,correct",
    [
        # the lenient rule: the last number of an unboxed response, and 1 % tolerance in the reward as well
        ("<think>WZ = WX = 14.9</think> The answer is 14.9", "14.9", True),
        (r"\boxed{2\sqrt{3}}", "3.464", True),
        (r"\boxed{12\pi}", "37.699", True),
        (r"\boxed{102}", "100", False),
    ],
)
def test_lenient_grader_is_kept_for_both_purposes(response, reference, correct):
    assert grader("lenient", "evaluate")(response, reference) is correct
    assert grader("lenient", "reward")(response, reference) is correct
    assert grader("lenient", "reward", tolerance=0.0)(r"\boxed{101}", "100") is False


@pytest.mark.parametrize(
    "text,content",
    [
        (r"a \boxed{1} b \boxed{\frac{1}{2}} c", r"\frac{1}{2}"),
        (r"\boxed{ 7 }", "7"),
        (r"\boxed{1} \boxed{2", None),  # the last box is open: no answer
        ("no box here", None),
        (r"\fbox{3}", None),  # only \boxed{ counts
    ],
)
def test_release_boxed_reads_only_the_last_box(text, content):
    assert release_boxed(text) == content


def test_close_enough_reads_arithmetic_only_and_never_executes_code(tmp_path):
    assert is_close_enough("3*(1+2)", "9") and is_close_enough("3(1+2)", "9")
    assert is_close_enough("0", "0") and not is_close_enough("0.001", "0")
    # Code whose value, were it run, would be the reference; and code that would leave a file behind.
    assert not is_close_enough("__import__('math').floor(9.5)", "9")
    marker = tmp_path / "ran"
    assert not is_close_enough(f"__import__('pathlib').Path({str(marker)!r}).touch() or 5", "5")
    assert not marker.exists()
    assert not is_close_enough("1,000", "1000")  # a tuple in Python: not a number
    assert is_close_enough("3^2", "1")  # Python's exclusive or, as the release's eval() reads it
    assert not grade_answer(None, "1") and not is_close_enough(None, "1")
