"""xmodal-eval and trainers/evaluation: rates and derived metrics, items, the generation prompt vs training tokens,
sampling, and the recipe end to end."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from xmodal.recipes import instances_of
from xmodal.data_builders.render import TextStyle, _fit
from xmodal.core.scoring import ExactConflictJudge, FreeTextConflictJudge, answers_match
from xmodal.recipes import CONFIG_DIR
from xmodal.recipes.evaluate import run
from xmodal.trainers.evaluation.answers import (
    EvalItem,
    GenerationSettings,
    Prediction,
    eval_items,
    generation_prompt,
    predict,
    prompt_inputs,
    training_prompt_ids,
)
from xmodal.trainers.evaluation.report import summarise
from xmodal.trainers.models.tiny import build_tiny_llava, build_tiny_qwen2_vl
from tests.support.answering import always_answer
from tests.support.tiny_batches import FAMILY_TEXT, FAMILY_VISION

TEXT, VISION = FAMILY_TEXT, FAMILY_VISION
BUILDERS = {"llava": build_tiny_llava, "qwen2": build_tiny_qwen2_vl}
# What each family's generation prompt ends with: the assistant turn's opening.
ASSISTANT_HEADER = {"llava": "ASSISTANT:", "qwen2": "<|im_start|>assistant\n"}


def _prediction(condition: str, prediction: str, target: str, record: str = "r", conflict: bool | None = None):
    meta = {} if conflict is None else {"conflict": conflict}
    item = EvalItem(f"{condition}-{prediction}", condition, [], [], target, record, meta)
    judged = None if conflict is None else [ExactConflictJudge("The sources conflict.")(prediction)]
    return Prediction(item, "prompt", [prediction], [answers_match(prediction, target)], judged, True)


def _rate(summary_entry: dict) -> tuple:
    return summary_entry["accuracy"], summary_entry["correct"], summary_entry["answers"]


def test_modality_gap_is_text_minus_vision_accuracy():
    predictions = [
        _prediction("text_centric", "1", "1", "r1"),
        _prediction("text_centric", "2", "2", "r2"),
        _prediction("vision_centric", "1", "1", "r1"),
        _prediction("vision_centric", "0", "2", "r2"),
    ]
    summary = summarise(predictions)
    assert _rate(summary["conditions"]["text_centric"]) == (1.0, 2, 2)
    assert _rate(summary["conditions"]["vision_centric"]) == (0.5, 1, 2)
    assert summary["conditions"]["text_centric"]["count"] == 2
    assert summary["derived"]["modality_gap"]["difference"] == 0.5
    assert "modality_gap" not in summarise(predictions[:2])["derived"]


def test_conflict_recognition_control_accuracy_and_false_conflicts():
    conflict, agree = "The sources conflict.", "The sources agree. {}"
    predictions = [
        _prediction("cross_modal", "the sources conflict", conflict, "r1", True),
        _prediction("cross_modal", agree.format(3), conflict, "r1", True),
        _prediction("cross_modal", agree.format(5), conflict, "r2", True),
        _prediction("cross_modal", conflict, conflict, "r2", True),
        _prediction("cross_modal_control", agree.format(3), agree.format(3), "r1", False),
        _prediction("cross_modal_control", agree.format(4), agree.format(3), "r1", False),  # agrees, wrong answer
        _prediction("cross_modal_control", conflict, agree.format(3), "r2", False),  # a false alarm
        _prediction("unimodal_text", conflict, conflict, "r1", True),
    ]
    derived = summarise(predictions)["derived"]
    assert {name: _rate(value) for name, value in derived.items()} == {
        "conflict_recognition/cross_modal": (0.5, 2, 4),
        "control_accuracy/cross_modal": (1 / 3, 1, 3),
        "false_conflict/cross_modal": (1 / 3, 1, 3),
        "conflict_recognition/unimodal_text": (1.0, 1, 1),
    }


def _conversation(answer: str, image: str | None) -> list[dict]:
    parts = ([{"type": "image"}] if image else []) + [{"type": "text", "text": "What is the value of A?"}]
    return [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def test_teacher_views_become_their_own_condition_and_counts_are_capped():
    instances = [
        {
            "id": f"r{i}:vision_centric",
            "condition": "vision_centric",
            "messages": _conversation(str(i), "x.png"),
            "images": ["x.png"],
            "target": str(i),
            "meta": {"pair_id": f"r{i}"},
            "teacher": {"condition": "text_centric", "messages": _conversation(str(i), "x.png"), "images": ["x.png"]},
        }
        for i in range(3)
    ]
    items = eval_items(instances, per_condition=2)
    assert [(item.id, item.condition, item.target, item.record) for item in items] == [
        ("r0:vision_centric", "vision_centric", "0", "r0"),
        ("r0:text_centric", "text_centric", "0", "r0"),
        ("r1:vision_centric", "vision_centric", "1", "r1"),
        ("r1:text_centric", "text_centric", "1", "r1"),
    ]
    assert len(eval_items(instances)) == 6  # no cap: the whole split


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request, tmp_path_factory):
    torch.manual_seed(0)
    model, processor = BUILDERS[request.param](text=TEXT, vision=VISION)
    image = tmp_path_factory.mktemp("images") / "red.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(image)
    return request.param, model.eval(), processor, str(image)


def _items(image: str) -> list[EvalItem]:
    two_turns = _conversation("red", image)[:2] + [
        {"role": "user", "content": [{"type": "text", "text": "Facts: A = 1, B = 2\nAnd the key?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A = 1"}]},
    ]
    return [
        EvalItem("image", "vision_centric", _conversation("1", image), [image], "1"),
        EvalItem("two-turns", "vision_centric", two_turns, [image], "A = 1"),
        EvalItem("text", "text_only", _conversation("1", None), [], "1"),
    ]


def test_generation_prompt_equals_the_training_prompt_tokens(family):
    name, _, processor, image = family
    for item in _items(image):
        inputs = prompt_inputs([generation_prompt(item, processor)], [item], processor)
        assert inputs["input_ids"][0].tolist() == training_prompt_ids(item, processor), item.id


def test_left_padded_batches_answer_as_single_prompts(family):
    name, model, processor, image = family
    items = _items(image)
    batched = predict(model, processor, items, GenerationSettings(len(items), max_new_tokens=4))
    single = predict(model, processor, items, GenerationSettings(1, max_new_tokens=4))
    assert [p.answers for p in batched] == [p.answers for p in single]
    assert all(p.prompt_matches_training for p in batched)
    assert all(p.prompt.endswith(ASSISTANT_HEADER[name]) for p in batched)


def test_sampling_is_seeded_averaged_over_samples_and_leaves_the_global_random_state(family):
    name, model, processor, image = family
    items = _items(image)
    settings = GenerationSettings(len(items), max_new_tokens=4, num_samples=3, temperature=5.0, seed=3)
    state = torch.random.get_rng_state()
    first = predict(model, processor, items, settings)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = predict(model, processor, items, settings)
    assert [p.answers for p in first] == [p.answers for p in again]
    assert all(len(p.answers) == 3 == len(p.correct) for p in first)
    # A random tiny model at a high temperature: the three samples of some prompt differ.
    assert any(len(set(p.answers)) > 1 for p in first)
    # Each item's reference made its own first sample: its score is the share of its samples equal to that one
    # (the random model answers no real reference, so scoring those would be 0.0 whatever the averaging).
    retargeted = [replace(item, target=p.answers[0]) for item, p in zip(items, first)]
    rescored = predict(model, processor, retargeted, settings)
    assert [p.answers for p in rescored] == [p.answers for p in first]
    assert [p.score for p in rescored] == [p.answers.count(p.answers[0]) / 3 for p in rescored]
    assert any(0 < p.score < 1 for p in rescored)


def test_greedy_decoding_takes_one_sample():
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(num_samples=4)


def _tiny_checkpoint(path, answer: str | None = None) -> str:
    """A random-init tiny LLaVA; with `answer`, one that answers exactly that to every prompt."""
    torch.manual_seed(0)
    model, processor = build_tiny_llava(text=TEXT, vision=VISION)
    if answer is not None:
        always_answer(model, processor, answer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def _evaluate_config(tmp_path, checkpoint: str, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=[
                "model=tiny_llava",
                "evaluate.max_new_tokens=3",
                f"evaluate.checkpoints=[{checkpoint}]",
                f"evaluate.out_dir={tmp_path / 'eval'}",
                f"output_dir={tmp_path}",
                f"cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )


def test_recipe_writes_eval_json_predictions_and_results_table(tmp_path):
    """The checkpoint answers one value to every prompt (tests/support/answering.py), chosen so that some items are
    right and some wrong: each condition's accuracy is the hand count of items whose reference is that value."""
    checkpoint = tmp_path / "checkpoint"
    out = tmp_path / "eval"
    cfg = _evaluate_config(tmp_path, str(checkpoint), "builder=paired", "builder.emit=both", "data.num_records=8",
                           "evaluate.per_condition=4")
    references = {}
    for item in eval_items(instances_of(cfg).instances, 4):
        references.setdefault(item.condition, []).append(item.target)
    answer = Counter(references["vision_centric"]).most_common(1)[0][0]
    right = {condition: targets.count(answer) for condition, targets in references.items()}
    assert all(0 < count < 4 for count in right.values()), references  # right and wrong items in each condition
    _tiny_checkpoint(checkpoint, answer=answer)
    with open(run(cfg)) as f:
        report = json.load(f)
    (result,) = report["results"]
    assert result["checkpoint"] == str(checkpoint)
    assert {condition: stats["count"] for condition, stats in result["conditions"].items()} == {
        "text_centric": 4,
        "vision_centric": 4,
    }
    assert all(stats["prompt_mismatches"] == 0 for stats in result["conditions"].values())
    for condition, stats in result["conditions"].items():
        assert (stats["accuracy"], stats["correct"], stats["answers"]) == (right[condition] / 4, right[condition], 4)
        low, high = stats["ci"]
        assert 0 <= low <= stats["accuracy"] <= high <= 1
    gap = result["conditions"]["text_centric"]["accuracy"] - result["conditions"]["vision_centric"]["accuracy"]
    assert result["derived"]["modality_gap"]["difference"] == pytest.approx(gap)
    low, high = result["derived"]["modality_gap"]["ci"]
    assert -1 <= low <= gap <= high <= 1
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and {p["condition"] for p in predictions} == {"text_centric", "vision_centric"}
    assert all(p["answers"] == [answer] and p["correct"] == [p["target"] == answer] for p in predictions)
    # The same 4 records under both conditions; only the text-centric prompt states the facts.
    records = {p["id"].rsplit(":", 1)[0] for p in predictions}
    assert len(records) == 4
    assert all(("Facts:" in p["prompt"]) == (p["condition"] == "text_centric") for p in predictions)
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "| checkpoint | text_centric | vision_centric | modality_gap |"
    assert table[2].startswith(f"| {checkpoint} | ") and "/4)" in table[2] and "[" in table[2]


def test_free_text_judge_scores_conflict_recognition_with_intervals(tmp_path):
    """Two checkpoints with known answers (tests/support/answering.py): one says the sources conflict to every
    prompt (every conflict recognised, every control falsely called a conflict, no control right), the other that
    they agree on one value (nothing recognised; the controls agreeing on that value right, by a hand count)."""
    conflicting, agreeing = tmp_path / "conflicting", tmp_path / "agreeing"
    cfg = _evaluate_config(
        tmp_path, f"{conflicting},{agreeing}", "builder=conflict", "builder.variants=rotate",
        "builder.conditions=[cross_modal]", "data.num_records=4", "judge=free_text", "evaluate.max_new_tokens=12",
    )
    instances = instances_of(cfg).instances
    controls = [i["target"] for i in instances if i["condition"] == "cross_modal_control"]
    agreement = Counter(controls).most_common(1)[0][0]  # "The sources agree. <value>"
    assert 0 < controls.count(agreement) < len(controls) == 4, controls
    _tiny_checkpoint(conflicting, answer="The sources conflict.")
    _tiny_checkpoint(agreeing, answer=agreement)
    with open(run(cfg)) as f:
        results = {Path(result["checkpoint"]).name: result for result in json.load(f)["results"]}
    expected = {  # (right or said conflict, answers) per rate
        "conflicting": {"conflict_recognition": (4, 4), "false_conflict": (4, 4), "control_accuracy": (0, 4)},
        "agreeing": {
            "conflict_recognition": (0, 4), "false_conflict": (0, 4),
            "control_accuracy": (controls.count(agreement), 4),
        },
    }
    for name, rates in expected.items():
        result = results[name]
        assert result["conditions"]["cross_modal"]["count"] == 4  # the whole split: one conflict per record
        for rate, (hits, answers) in rates.items():
            derived = result["derived"][f"{rate}/cross_modal"]
            counted = (derived["correct"], derived["answers"], derived["accuracy"])
            assert counted == (hits, answers, hits / answers), (name, rate)
            low, high = derived["ci"]
            assert low <= derived["accuracy"] <= high
    judge, meta = FreeTextConflictJudge(), {i["id"]: i["meta"] for i in instances}
    lines = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert {line["answers"][0] for line in lines} == {"The sources conflict.", agreement}
    for line in lines:
        candidates = meta[line["id"]]["answer"], meta[line["id"]]["counter_answer"]
        assert line["said_conflict"] == [judge(answer, *candidates) for answer in line["answers"]]


def test_answers_that_read_the_pieces_first_are_judged_by_their_last_sentence(tmp_path, caplog):
    """`conflict_reading` reaches the builder (targets "<v1> and <v2>. <decision>") and the exact judge: a checkpoint
    that reads two values and says the sources conflict recognises every conflict and falsely alarms on every
    control; with too few new tokens for the targets, the evaluation says so in the log."""
    reading = "conflict_reading='{first} and {second}. '"
    checkpoint = _tiny_checkpoint(tmp_path / "reads", answer="3 and 5. The sources conflict.")
    common = ("builder=conflict", "builder.variants=rotate", "builder.conditions=[unimodal_text]",
              "data.num_records=4", reading)
    cfg = _evaluate_config(tmp_path, checkpoint, *common, "evaluate.max_new_tokens=12")
    targets = [i["target"] for i in instances_of(cfg).instances]
    assert all(t.endswith(("The sources conflict.", "The sources agree.")) or " agree. " in t for t in targets)
    assert all(t.split(". ", 1)[0].count(" and ") == 1 for t in targets), targets
    with caplog.at_level("WARNING", logger="xmodal.trainers.evaluation.answers"):
        with open(run(cfg)) as f:
            derived = json.load(f)["results"][0]["derived"]
    assert not caplog.records  # every target fits in 12 tokens
    assert derived["conflict_recognition/unimodal_text"]["accuracy"] == 1.0
    assert derived["false_conflict/unimodal_text"]["accuracy"] == 1.0
    assert derived["control_accuracy/unimodal_text"]["accuracy"] == 0.0

    cut = _evaluate_config(tmp_path, checkpoint, *common, "evaluate.max_new_tokens=4")
    with caplog.at_level("WARNING", logger="xmodal.trainers.evaluation.answers"):
        run(cut)
    assert any("8 of 8 targets take more than max_new_tokens=4" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("model, width", [("tiny_llava", 64), ("qwen2_5_vl_7b", 448), ("llava_1_5_7b", 336)])
def test_conflict_evidence_is_drawn_with_the_models_render_preset(model, width):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["builder=conflict", f"model={model}"])
    assert cfg.builder.render == cfg.model.render and cfg.builder.render.width == width
    if width >= 336:
        # A CMQA-sized passage (about 60 words) fits a real model's image at the preset's full font size.
        passage = " ".join(["The bridge over the river was completed in 1932 by the city engineers."] * 5)
        font, _ = _fit(passage, TextStyle(**cfg.builder.render))
        assert font.size == cfg.builder.render.font_size
