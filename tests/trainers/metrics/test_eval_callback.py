"""`metrics=eval`: held-out accuracy per condition and the gap, scored on a model whose answers are known (fast,
in-process), the held-out records apart from the training records, and through xmodal-train in metrics.jsonl beside
`metrics=imbalance`, on one process and on 2 torchrun ranks under DeepSpeed ZeRO-2 / ZeRO-3 (slow)."""

from __future__ import annotations

from collections import Counter

import pytest
from hydra.errors import InstantiationException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from hydra.utils import instantiate
from transformers import Trainer, TrainingArguments

from xmodal.data_builders.instances import build_instances
from xmodal.trainers.evaluation.answers import eval_items, predict
from xmodal.trainers.evaluation.report import flat_scalars, summarise
from xmodal.trainers.models import load_for_inference, load_model, load_processor, materialise_init

from tests.support.answering import always_answer
from tests.support.helpers import FAST, compose_config, read_metrics, xmodal_train

HELD_OUT = [
    "builder=paired",
    "metrics.eval.every_n_steps=2",
    "metrics.eval.data_overrides={seed:7,num_records:6}",
    "metrics.eval.builder_overrides={emit:both}",  # both views of each held-out record
    "metrics.eval.per_condition=5",
    "metrics.eval.generation.batch_size=2",  # 3 batches per condition: ranks get unequal shares
    "metrics.eval.generation.max_new_tokens=3",
]
# Each view of the held-out records on its own (`emit: mix`): the two conditions hold different records.
HELD_OUT_MIXED = [
    *HELD_OUT, "metrics.eval.data_overrides={seed:7,num_records:12}", "metrics.eval.builder_overrides={emit:mix}"
]


def test_logged_accuracy_is_the_share_of_held_out_items_answered_right(tmp_path, cache_dir):
    """A tiny model made to answer one value to everything: per condition, the logged accuracy is the share of
    held-out items whose reference is that value (a hand count over the callback's items), and the gap their
    difference. The views of the held-out records are mixed (`emit: mix`), so each condition has its own records;
    the answer is chosen so that each condition has right and wrong items, and the two shares differ."""
    cfg = compose_config([*FAST, "metrics=eval", *HELD_OUT_MIXED, f"cache_dir={cache_dir}"])
    path = materialise_init(cfg.model.init, cfg.cache_dir, cfg.seed)
    model, processor = load_model(path, "float32", "sdpa"), load_processor(path)
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args, processing_class=processor)
    callback = instantiate(cfg.metrics.eval)
    callback.bind(trainer)
    references = {
        condition: [item.target for item in callback.items if item.condition == condition]
        for condition in ("text_centric", "vision_centric")
    }
    shares = {
        answer: {condition: targets.count(answer) / len(targets) for condition, targets in references.items()}
        for answer in sorted(set(references["text_centric"]) & set(references["vision_centric"]))
    }
    answer, expected = next(
        (
            (answer, share) for answer, share in shares.items()
            if 0 < min(share.values()) and share["text_centric"] != share["vision_centric"]
        ),
        (None, None),
    )
    assert answer is not None, references  # the held-out set must allow a non-trivial check
    always_answer(model, processor, answer)

    callback.on_due_step(trainer.args, trainer.state, trainer.control, model)
    logged = trainer.state.log_history[-1]
    assert logged["eval/items"] == 10 and logged["eval/prompt_mismatches"] == 0
    for condition, share in expected.items():
        assert logged[f"eval/accuracy/{condition}"] == pytest.approx(share), condition
    assert logged["eval/modality_gap"] == pytest.approx(expected["text_centric"] - expected["vision_centric"])


@pytest.mark.parametrize("held_out", [HELD_OUT, HELD_OUT_MIXED], ids=["both_views", "mixed_views"])
def test_held_out_records_share_no_facts_with_the_training_records(held_out, cache_dir):
    """No held-out record shows a fact set (so an image) that a training record shows: the tests in this file
    measure held-out accuracy, not recall of trained items."""
    cfg = compose_config([*FAST, "metrics=eval", *held_out, f"cache_dir={cache_dir}"])

    def fact_sets(data) -> set[frozenset]:
        return {frozenset(record["meta"]["facts"]) for record in instantiate(data).records()}

    held_out_facts = fact_sets(instantiate(cfg.metrics.eval).heldout_data)
    assert len(held_out_facts) == cfg.metrics.eval.data_overrides.num_records
    assert not held_out_facts & fact_sets(cfg.data)


def _eval_logs(output_dir) -> dict[int, dict]:
    return {
        record["step"]: {k: v for k, v in record.items() if k.startswith("eval/")}
        for record in read_metrics(output_dir)
        if "eval/items" in record
    }


def _recomputed_on_final_weights(overrides: list[str], output_dir) -> dict[str, float]:
    """The logged scalars computed afresh: the callback's held-out items answered by the saved final model. (The
    random-init tiny model answers every item wrong, so this checks which model and items were scored, not the
    scoring: test_logged_accuracy_is_the_share_of_held_out_items_answered_right checks that.)"""
    cfg = compose_config(overrides)
    callback = instantiate(cfg.metrics.eval)
    items = eval_items(build_instances(callback.heldout_data, callback.heldout_builder, seed=callback.seed).instances, callback.per_condition)
    model, processor = load_for_inference(str(output_dir / "final"), "float32", "sdpa")
    predictions = predict(model, processor, items, callback.settings)
    mismatches = sum(not prediction.prompt_matches_training for prediction in predictions)
    scalars = {"eval/items": len(items), "eval/prompt_mismatches": mismatches}
    return {**scalars, **flat_scalars(summarise(predictions, resamples=0), "eval")}


@pytest.mark.slow
def test_eval_and_imbalance_metrics_log_held_out_accuracy_and_gap(tmp_path, cache_dir):
    out = tmp_path / "run"
    overrides = [
        *FAST, "metrics=[imbalance,eval]", "metrics.imbalance.every_n_steps=2", *HELD_OUT, "logger=tensorboard",
        f"output_dir={out}",
    ]
    xmodal_train(overrides, cache_dir)
    logs = _eval_logs(out)
    assert sorted(logs) == [2, 4]
    for scalars in logs.values():
        assert scalars["eval/items"] == 10 and scalars["eval/prompt_mismatches"] == 0
        assert scalars["eval/modality_gap"] == pytest.approx(
            scalars["eval/accuracy/text_centric"] - scalars["eval/accuracy/vision_centric"]
        )
    assert logs[4] == pytest.approx(_recomputed_on_final_weights(overrides, out))
    assert any("imbalance/ratio" in record for record in read_metrics(out))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    # HF's TensorBoard callback files every logged key under train/.
    assert {"train/eval/accuracy/vision_centric", "train/eval/modality_gap"} <= set(events.Tags()["scalars"])


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_ranks_share_the_held_out_set_under_deepspeed(stage, tmp_path, cache_dir):
    out = tmp_path / "run"
    overrides = [*FAST, "metrics=eval", f"deepspeed=zero{stage}", *HELD_OUT, f"output_dir={out}"]
    xmodal_train(overrides, cache_dir, processes=2)
    logs = _eval_logs(out)
    assert sorted(logs) == [2, 4] and all(scalars["eval/items"] == 10 for scalars in logs.values())
    assert logs[4] == pytest.approx(_recomputed_on_final_weights(overrides, out))


def test_held_out_set_must_differ_from_the_training_records():
    # Hydra wraps the callback's ConfigError; its message is the user's.
    with pytest.raises(InstantiationException, match="data_overrides is empty"):
        instantiate(compose_config(["metrics=eval", "metrics.eval.data_overrides={}"]).metrics.eval)
    with pytest.raises(InstantiationException, match=r"has no field\(s\) \['split'\]"):
        instantiate(compose_config(["metrics=eval", "metrics.eval.data_overrides={split:test}"]).metrics.eval)
