"""Every paper experiment, alignment variant, teacher and freeze switch trained through `xmodal-train`.

Each is a `debug=fast` run (4 steps, tiny LLaVA) that checks a number, not only that it ran: the loss at
the random-init level, the logged total against its weighted terms, the frozen teacher against the shared
one, stage 2 of "alignment, then curriculum" against a forward of stage 1's model, and which components'
weights moved.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForImageTextToText

from data_builders.collate import MultimodalCollator
from losses import build_loss
from recipes.finetune import build_train_dataset
from tests.core.helpers import FAST, read_metrics, xmodal_train
from trainers.finetuning import component_prefixes
from trainers.models import load_processor, model_location

# A random-init tiny LLaVA predicts about uniformly over its 1024-token vocabulary: its first token-mean
# cross-entropy lies near ln(1024) = 6.93, far from a token sum (x the answer length) or a batch sum.
RANDOM_INIT_LOSS = (math.log(1024) - 1.5, math.log(1024) + 1.5)


def _train(args: list[str], out, cache_dir: str, **kwargs) -> list[dict]:
    """Train into `out` and return its metrics lines that carry the loss terms (one per step)."""
    xmodal_train([*FAST, *args, f"output_dir={out}"], cache_dir, **kwargs)
    records = [record for record in read_metrics(str(out)) if "lm_loss" in record]
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert all(math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"]) for record in records)
    return records


def _assert_trained(out, frozen: set[str]):
    """Every tensor of a frozen component is bit-identical to the run's base model; every other component moved."""
    final = AutoModelForImageTextToText.from_pretrained(out / "final")
    base = AutoModelForImageTextToText.from_pretrained(model_location(OmegaConf.load(out / "config.yaml"))).state_dict()
    moved: dict[str, bool] = {}
    for name, tensor in final.state_dict().items():
        for component, prefixes in component_prefixes(final).items():
            if name.startswith(prefixes):
                moved[component] = moved.get(component, False) or not torch.equal(tensor, base[name])
    assert {component for component, changed in moved.items() if changed} == set(moved) - frozen, moved
    assert set(moved) == {"vision_tower", "projector", "language_model"}


def _assert_total_is_the_weighted_sum(out, records: list[dict]):
    """The logged `loss` (what was back-propagated) is the configured weighted sum of the logged terms."""
    terms = build_loss(OmegaConf.load(out / "config.yaml").loss).terms
    for record in records:
        # A step's loss is computed before the optimizer step: at global_step = step - 1.
        total = sum(term.weight_at(record["step"] - 1) * record[term.name] for term in terms)
        assert record["loss"] == pytest.approx(total, rel=1e-5, abs=1e-5), record


@pytest.mark.parametrize("name", ["full_text", "no_text", "mix", "curriculum"])
def test_lm_only_experiment_trains_the_language_model_and_projector(name, tmp_path, cache_dir):
    out = tmp_path / "run"
    records = _train([f"experiment=modality_gap/{name}"], out, cache_dir)
    assert RANDOM_INIT_LOSS[0] < records[0]["lm_loss"] < RANDOM_INIT_LOSS[1]
    _assert_total_is_the_weighted_sum(out, records)
    _assert_trained(out, frozen={"vision_tower"})  # finetune=full's default switches


@pytest.fixture(scope="module")
def kl_stage(tmp_path_factory, cache_dir):
    """`experiment=modality_gap/kl` into its own default output_dir (relative to the run's working directory)."""
    workdir = tmp_path_factory.mktemp("kl")
    xmodal_train([*FAST, "experiment=modality_gap/kl"], cache_dir, cwd=workdir)
    (out,) = (workdir / "outputs" / "modality_gap" / "kl").iterdir()
    return workdir, out


@pytest.mark.slow
def test_kl_experiment_logs_a_finite_alignment_in_the_total_and_trains_the_student(kl_stage):
    _, out = kl_stage
    records = [record for record in read_metrics(str(out)) if "lm_loss" in record]
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    # k3 estimates are non-negative per token; at step 1 both views come from the same weights but differ in input.
    assert all(math.isfinite(record["align_loss"]) and record["align_loss"] >= 0 for record in records)
    assert records[0]["align_loss"] > 0
    _assert_total_is_the_weighted_sum(out, records)
    _assert_trained(out, frozen={"vision_tower"})


@pytest.mark.slow
def test_kl_curriculum_starts_from_the_kl_stage_model(kl_stage, cache_dir):
    """Stage 2's first logged LM loss is stage 1's final model on stage 2's data, not the base model's.

    A batch larger than the data makes the first step one batch of every instance, whatever their order.
    """
    workdir, kl_out = kl_stage
    stage_two = [*FAST, "data.num_records=4", "trainer.per_device_train_batch_size=64"]
    xmodal_train([*stage_two, "experiment=modality_gap/kl_curriculum"], cache_dir, cwd=workdir)
    (out,) = (workdir / "outputs" / "modality_gap" / "kl_curriculum").iterdir()
    first = next(record for record in read_metrics(str(out)) if "lm_loss" in record)
    cfg = OmegaConf.load(out / "config.yaml")
    assert os.path.samefile(workdir / cfg.model.path, kl_out / "final")

    processor = load_processor(str(kl_out / "final"))
    dataset, _ = build_train_dataset(cfg, processor)
    assert len(dataset) <= cfg.trainer.per_device_train_batch_size
    batch = MultimodalCollator(processor, cfg.model.template)([dataset[i] for i in range(len(dataset))])
    inputs = {key: value for key, value in batch.items() if key != "branch"}

    def lm_loss(path) -> float:
        with torch.no_grad():
            return float(AutoModelForImageTextToText.from_pretrained(path).eval()(**inputs).loss)  # HF's token mean

    assert first["lm_loss"] == pytest.approx(lm_loss(kl_out / "final"), rel=1e-4)
    assert abs(first["lm_loss"] - lm_loss(model_location(OmegaConf.load(kl_out / "config.yaml")))) > 1e-3


@pytest.mark.slow
def test_frozen_teacher_matches_the_shared_one_at_step_one_then_stays_behind(kl_stage, tmp_path, cache_dir):
    """Before the first update the frozen copy is the model itself; afterwards only the shared teacher moves."""
    _, kl_out = kl_stage
    out = tmp_path / "frozen"
    frozen = _train(["experiment=modality_gap/kl", "loss.terms.align.teacher=frozen"], out, cache_dir)
    shared = [record for record in read_metrics(str(kl_out)) if "lm_loss" in record]
    assert frozen[0]["align_loss"] == pytest.approx(shared[0]["align_loss"], rel=1e-4, abs=1e-6)
    assert frozen[0]["lm_loss"] == pytest.approx(shared[0]["lm_loss"], rel=1e-5)
    assert frozen[-1]["align_loss"] != pytest.approx(shared[-1]["align_loss"], rel=1e-3, abs=1e-6)
    _assert_total_is_the_weighted_sum(out, frozen)


@pytest.mark.parametrize("loss", ["lm_full_kl", "lm_hidden"])
def test_alignment_variant_trains_with_its_term_in_the_total(loss, tmp_path, cache_dir):
    out = tmp_path / "run"
    records = _train(["builder=paired", f"loss={loss}"], out, cache_dir)
    # Exact KL and 1 - cos are >= 0, and > 0 while the two views' inputs differ.
    assert all(record["align_loss"] >= 0 for record in records) and records[0]["align_loss"] > 0
    _assert_total_is_the_weighted_sum(out, records)
    _assert_trained(out, frozen={"vision_tower"})


@pytest.mark.slow
def test_frozen_teacher_is_refused_under_zero3_with_the_reason(tmp_path, cache_dir):
    command = [
        os.path.join(os.path.dirname(sys.executable), "xmodal-train"),
        *FAST,
        "builder=paired",
        "loss=lm_kl",
        "loss.terms.align.teacher=frozen",
        "deepspeed=zero3",
        f"output_dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "XMODAL_CACHE": cache_dir, "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "teacher: frozen cannot copy a ZeRO-3 partitioned model" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize(
    "switches,frozen",
    [
        (["finetune.freeze_vision_tower=false", "finetune.freeze_projector=true"], {"projector"}),
        (["finetune.freeze_language_model=true"], {"vision_tower", "language_model"}),
        # LoRA: the unfrozen tower trains as a PEFT `modules_to_save` copy; merged adapters move the LM.
        (["finetune=lora", "finetune.freeze_vision_tower=false", "finetune.freeze_projector=true"], {"projector"}),
    ],
    ids=["full-tower-unfrozen-projector-frozen", "full-lm-frozen", "lora-tower-unfrozen-projector-frozen"],
)
def test_freeze_switches_keep_exactly_the_frozen_components(switches, frozen, tmp_path, cache_dir):
    out = tmp_path / "run"
    _train(switches, out, cache_dir)
    _assert_trained(out, frozen)
