"""Two-process `torchrun` runs of the real entry point under DeepSpeed ZeRO-2/3 on CPU (gloo).

Batches mix image and text-only instances (`data=mixture`, one instance per rank), so ranks regularly
disagree on whether their batch has an image: the run must neither hang nor abort.
"""

from __future__ import annotations

import shutil

import pytest

from tests.support.helpers import loss_by_step, read_metrics, xmodal_train
from tests.recipes.test_train_recipe import _generate, assert_same_first_step, first_step_logs

pytestmark = pytest.mark.distributed
MIXED = [
    "model=tiny_llava",
    "data=mixture",
    "builder=dataset_mix",
    "data.sources.image.num_records=32",
    "data.sources.text.num_records=32",
    "trainer.per_device_train_batch_size=1",
    "trainer.logging_steps=1",
    "metrics=imbalance",
    "metrics.imbalance.every_n_steps=2",
    "metrics.imbalance.probe_size=4",
]


def _assert_imbalance_logged(output_dir: str, steps: list[int]):
    logged = {record["step"]: record for record in read_metrics(output_dir) if "imbalance/ratio" in record}
    assert sorted(logged) == steps
    assert all(0.0 <= record["imbalance/ratio"] <= 1.0 for record in logged.values())


def test_zero2_lora_trains_and_resume_reproduces_the_losses(tmp_path, cache_dir):
    full = tmp_path / "full"
    common = [*MIXED, "deepspeed=zero2", "finetune=lora", "trainer.max_steps=6", "trainer.save_steps=3"]
    xmodal_train([*common, f"output_dir={full}"], cache_dir, processes=2)
    _assert_imbalance_logged(str(full), [2, 4, 6])
    _generate(str(full / "final"))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    xmodal_train([*common, f"output_dir={resumed}", "resume=true"], cache_dir, processes=2)
    uninterrupted, continued = loss_by_step(str(full)), loss_by_step(str(resumed))
    assert sorted(continued) == [4, 5, 6]
    for step in (4, 5, 6):
        assert continued[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6)


def test_zero3_full_finetune_of_tiny_qwen2_vl(tmp_path, cache_dir):
    out = tmp_path / "run"
    xmodal_train(
        [*MIXED, "model=tiny_qwen2_vl", "deepspeed=zero3", "trainer.max_steps=4", "trainer.save_steps=4", f"output_dir={out}"],
        cache_dir,
        processes=2,
    )
    assert sorted(loss_by_step(str(out))) == [1, 2, 3, 4]
    _assert_imbalance_logged(str(out), [2, 4])
    _generate(str(out / "final"))


@pytest.mark.parametrize("engine", ["none", "zero2"])
def test_two_processes_take_the_same_first_step_as_one_at_the_same_global_batch(engine, tmp_path, cache_dir):
    """Global batch 4 of paired rows: one process (4 x 1) and two (2 x 1 each) back-propagate the same loss and
    gradient; each rank divides by the global token count and the ranks' gradients are averaged."""
    args = [f"deepspeed={engine}"]
    one = first_step_logs([*args, "trainer.per_device_train_batch_size=4"], tmp_path / "one", cache_dir)
    two = first_step_logs([*args, "trainer.per_device_train_batch_size=2"], tmp_path / "two", cache_dir, processes=2)
    assert_same_first_step(two, one)
