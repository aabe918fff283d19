"""xmodal-eval: answer scoring, derived metrics, the generation prompt vs training tokens, and the recipe end to end."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from data_builders.scoring import answers_match
from data_builders.templates import get_template
from recipes import CONFIG_DIR
from recipes.evaluate import (
    EvalItem,
    Prediction,
    accuracy_by_condition,
    derived_metrics,
    eval_items,
    generation_prompt,
    predict,
    prompt_inputs,
    run,
    training_prompt_ids,
)
from trainers.models.tiny import build_tiny_llava, build_tiny_qwen2_vl

TEXT = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4)
BUILDERS = {"llava": build_tiny_llava, "qwen2": build_tiny_qwen2_vl}


def _prediction(condition: str, prediction: str, target: str) -> Prediction:
    item = EvalItem(f"{condition}-{prediction}", condition, [], [], target)
    return Prediction(item, "prompt", prediction, answers_match(prediction, target), True)


def test_modality_gap_is_text_minus_vision_accuracy():
    predictions = [
        _prediction("text_centric", "1", "1"),
        _prediction("text_centric", "2", "2"),
        _prediction("vision_centric", "1", "1"),
        _prediction("vision_centric", "0", "2"),
    ]
    per_condition = accuracy_by_condition(predictions)
    assert per_condition["text_centric"] == {"accuracy": 1.0, "correct": 2, "count": 2}
    assert per_condition["vision_centric"] == {"accuracy": 0.5, "correct": 1, "count": 2}
    assert derived_metrics(predictions, per_condition, conflict_answer=None) == {"modality_gap": 0.5}
    assert "modality_gap" not in derived_metrics(predictions[:2], accuracy_by_condition(predictions[:2]), None)


def test_conflict_recognition_control_accuracy_and_false_conflicts():
    conflict, agree = "The sources conflict.", "The sources agree. {}"
    predictions = [
        _prediction("cross_modal", "the sources conflict", conflict),
        _prediction("cross_modal", agree.format(3), conflict),
        _prediction("cross_modal", agree.format(5), conflict),
        _prediction("cross_modal", conflict, conflict),
        _prediction("cross_modal_control", agree.format(3), agree.format(3)),
        _prediction("cross_modal_control", agree.format(4), agree.format(3)),  # agrees, wrong answer
        _prediction("cross_modal_control", conflict, agree.format(3)),  # a false alarm
        _prediction("unimodal_text", conflict, conflict),
    ]
    derived = derived_metrics(predictions, accuracy_by_condition(predictions), conflict_answer=conflict)
    assert derived == {
        "conflict_recognition/cross_modal": {"accuracy": 0.5, "correct": 2, "count": 4},
        "control_accuracy/cross_modal": {"accuracy": 1 / 3, "correct": 1, "count": 3},
        "false_conflict/cross_modal": {"accuracy": 1 / 3, "correct": 1, "count": 3},
        "conflict_recognition/unimodal_text": {"accuracy": 1.0, "correct": 1, "count": 1},
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
    assert [(item.id, item.condition, item.target) for item in items] == [
        ("r0:vision_centric", "vision_centric", "0"),
        ("r0:text_centric", "text_centric", "0"),
        ("r1:vision_centric", "vision_centric", "1"),
        ("r1:text_centric", "text_centric", "1"),
    ]


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
        assert inputs["input_ids"][0].tolist() == training_prompt_ids(item, processor, get_template(name)), item.id


def test_left_padded_batches_answer_as_single_prompts(family):
    name, model, processor, image = family
    items = _items(image)
    settings = OmegaConf.create({"batch_size": len(items), "max_new_tokens": 4})
    batched = predict(model, processor, items, get_template(name), settings)
    single = predict(model, processor, items, get_template(name), OmegaConf.merge(settings, {"batch_size": 1}))
    assert [p.prediction for p in batched] == [p.prediction for p in single]
    assert all(p.prompt_matches_training for p in batched)
    assert all(p.prompt.endswith(get_template(name).assistant_header) for p in batched)


def test_recipe_writes_eval_json_predictions_and_results_table(tmp_path):
    torch.manual_seed(0)
    model, processor = build_tiny_llava(text=TEXT, vision=VISION)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    out = tmp_path / "eval"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=[
                "model=tiny_llava",
                "builder=paired",
                "builder.emit=both",
                "data.num_records=8",
                "evaluate.per_condition=4",
                "evaluate.max_new_tokens=3",
                f"evaluate.checkpoints=[{checkpoint}]",
                f"evaluate.out_dir={out}",
                f"output_dir={tmp_path}",
                f"cache_dir={tmp_path / 'cache'}",
            ],
        )
    with open(run(cfg)) as f:
        report = json.load(f)
    (result,) = report["results"]
    assert result["checkpoint"] == str(checkpoint)
    assert {condition: stats["count"] for condition, stats in result["conditions"].items()} == {
        "text_centric": 4,
        "vision_centric": 4,
    }
    assert all(stats["prompt_mismatches"] == 0 for stats in result["conditions"].values())
    gap = result["conditions"]["text_centric"]["accuracy"] - result["conditions"]["vision_centric"]["accuracy"]
    assert result["derived"]["modality_gap"] == pytest.approx(gap)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and {p["condition"] for p in predictions} == {"text_centric", "vision_centric"}
    # The same 4 records under both conditions; only the text-centric prompt states the facts.
    records = {p["id"].rsplit(":", 1)[0] for p in predictions}
    assert len(records) == 4
    assert all(("Facts:" in p["prompt"]) == (p["condition"] == "text_centric") for p in predictions)
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "| checkpoint | text_centric | vision_centric | modality_gap |"
    assert table[2].startswith(f"| {checkpoint} | ") and "/4)" in table[2]
