"""PGPS9K's `prompt_style=release_eval`: the prompts of paper 2's released evaluation scripts (eval/pgps9k/
test-qwen-2d5-vl.py and test-qwen-2d5-vl-fullcond-prompt.py), compared with strings written out by hand from them."""

from __future__ import annotations

from xmodal.data_builders.builders.paired import PairedBuilder
from xmodal.data_builders.sources.pgps9k import PAPER_INSTRUCTION, Pgps9kSource, release_eval_prompts

# The released instruction, as the scripts append it right after the question (no space, no final period).
RELEASED_EVAL_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in \\boxed{}"
)


def test_release_eval_prompts_on_the_real_sample(pgps9k_root):
    source = Pgps9kSource(str(pgps9k_root), prompt_style="release_eval", on_error="skip")
    prob_10 = {r["id"]: r for r in source.records()}["pgps9k/train/prob_10"]
    # stru: line B A, line A D F, line F E, line B D E, \odot C lieson B F E A; every kept one is followed by ", "
    text_centric = (
        "In this problem, D is on line AF, D is on line BE, In \\odot C, point B, F, E, A lie on \\odot C, "
        "m \\angle ABD = x, m \\angle DFE = y, m \\widehat AE = 72.\n"
        "Based on these conditions, answer the question: Find the value of variable y." + RELEASED_EVAL_INSTRUCTION
    )
    vision_centric = "Based on these conditions, answer the question: Find the value of variable y." + RELEASED_EVAL_INSTRUCTION
    assert prob_10["meta"]["centric_prompts"] == {"text_centric": text_centric, "vision_centric": vision_centric}
    assert prob_10["messages"][0]["content"][1]["text"] == vision_centric
    assert prob_10["target"] == "\\boxed{" + prob_10["meta"]["answer"] + "}"
    built = {i["id"]: i for i in PairedBuilder(emit="both").build(source, seed=0)}
    instance = built["pgps9k/train/prob_10:vision_centric"]
    assert instance["teacher"]["messages"][0]["content"][1]["text"] == text_centric
    assert "You should FIRST" in PAPER_INSTRUCTION  # the training prompts are worded otherwise


def test_release_eval_keeps_the_released_shape_when_a_part_is_empty():
    # no semantic clause: the structural part's trailing ", " stays before the period, as the scripts write it
    assert release_eval_prompts("Find x.", ["line A B C", "line A B"], [])["text_centric"] == (
        "In this problem, B is on line AC, .\nBased on these conditions, answer the question: Find x."
        + RELEASED_EVAL_INSTRUCTION
    )
    assert release_eval_prompts("Find x.", [], ["AB = 2"])["text_centric"].startswith("In this problem, AB = 2.\n")
