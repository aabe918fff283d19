"""`metrics=eval` through xmodal-train: held-out accuracy per condition and the gap in metrics.jsonl, beside
`metrics=imbalance`, on one process and on 2 torchrun ranks under DeepSpeed ZeRO-2 / ZeRO-3."""

from __future__ import annotations

import pytest
from hydra.errors import InstantiationException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from hydra.utils import instantiate

from xmodal.data_builders.instances import build_instances
from xmodal.trainers.evaluation.answers import eval_items, predict
from xmodal.trainers.evaluation.report import flat_scalars, summarise
from xmodal.trainers.models import load_for_inference

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


def _eval_logs(output_dir) -> dict[int, dict]:
    return {
        record["step"]: {k: v for k, v in record.items() if k.startswith("eval/")}
        for record in read_metrics(output_dir)
        if "eval/items" in record
    }


def _recomputed_on_final_weights(overrides: list[str], output_dir) -> dict[str, float]:
    """The logged scalars computed afresh: the callback's held-out items answered by the saved final model."""
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
