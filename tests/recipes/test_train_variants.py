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

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForImageTextToText

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.losses import build_loss
from xmodal.recipes.finetune import build_train_dataset
from xmodal.recipes import CONFIG_DIR, base_model
from tests.support.helpers import compose_config, entry_point_env, read_metrics, train_command, xmodal_train
from xmodal.trainers.models.finetuning import component_prefixes
from xmodal.trainers.models import load_processor

# A random-init tiny LLaVA predicts about uniformly over its 1024-token vocabulary: its first token-mean
# cross-entropy lies near ln(1024) = 6.93, far from a token sum (x the answer length) or a batch sum.
RANDOM_INIT_LOSS = (math.log(1024) - 1.5, math.log(1024) + 1.5)
pytestmark = pytest.mark.slow  # every test here runs xmodal-train end to end


# Every shipped xmodal-train recipe (those with an `rl:` section are xmodal-rl's); the two stages of "alignment,
# then curriculum" are trained in order below.
EXPERIMENTS = sorted(
    os.path.relpath(os.path.join(folder, name), os.path.join(CONFIG_DIR, "experiment"))[: -len(".yaml")]
    for folder, _, names in os.walk(os.path.join(CONFIG_DIR, "experiment"))
    for name in names
    if name.endswith(".yaml") and "rl" not in OmegaConf.load(os.path.join(folder, name))
)
STAGED = ("modality_gap/kl", "modality_gap/kl_curriculum")


def _fast(experiment: str | None = None) -> list[str]:
    """`debug=fast` on the tiny LLaVA with a few records, sized for the data the experiment trains on."""
    args = ["debug=fast", "model=tiny_llava"] + ([f"experiment={experiment}"] if experiment else [])
    if "sources" in compose_config([*args, "output_dir=unused"]).data:  # a mixture: size each source
        return [*args, "data.sources.image.num_records=24", "data.sources.text.num_records=24"]
    return [*args, "data.num_records=48"]


def _train(args: list[str], out, cache_dir: str, experiment: str | None = None, **kwargs) -> list[dict]:
    """Train into `out` and return its loss records."""
    xmodal_train([*_fast(experiment), *args, f"output_dir={out}"], cache_dir, **kwargs)
    return _loss_records(out)


def _loss_records(out) -> list[dict]:
    """The run's metrics lines that carry the loss terms: one per step of the 4, all finite."""
    records = [record for record in read_metrics(str(out)) if "lm_loss" in record]
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert all(math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"]) for record in records)
    return records


def _frozen_by_config(out) -> set[str]:
    """The components whose freeze_* switch is on; under LoRA the merged adapters move the language model anyway."""
    finetune = OmegaConf.load(out / "config.yaml").finetune
    frozen = {part for part in ("vision_tower", "projector", "language_model") if finetune[f"freeze_{part}"]}
    return frozen - {"language_model"} if finetune.mode == "lora" else frozen


def _assert_trained(out, frozen: set[str]):
    """Every tensor of a frozen component is bit-identical to the run's base model; every other component moved."""
    final = AutoModelForImageTextToText.from_pretrained(out / "final")
    base = AutoModelForImageTextToText.from_pretrained(base_model(OmegaConf.load(out / "config.yaml"))).state_dict()
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


def _assert_experiment_trained(out, records: list[dict]):
    assert RANDOM_INIT_LOSS[0] < records[0]["lm_loss"] < RANDOM_INIT_LOSS[1]
    if "align_loss" in records[0]:
        # k3 estimates (and exact divergences) are >= 0, and > 0 while the two views' inputs differ.
        assert all(record["align_loss"] >= 0 for record in records) and records[0]["align_loss"] > 0
    _assert_total_is_the_weighted_sum(out, records)
    _assert_trained(out, frozen=_frozen_by_config(out))


@pytest.mark.parametrize("experiment", [name for name in EXPERIMENTS if name not in STAGED])
def test_experiment_trains_with_its_terms_in_the_total_and_moves_what_it_trains(experiment, tmp_path, cache_dir):
    out = tmp_path / "run"
    _assert_experiment_trained(out, _train([], out, cache_dir, experiment=experiment))


@pytest.fixture(scope="module")
def kl_stage(tmp_path_factory, cache_dir):
    """`experiment=modality_gap/kl` into its own default output_dir (relative to the run's working directory)."""
    workdir = tmp_path_factory.mktemp("kl")
    xmodal_train(_fast("modality_gap/kl"), cache_dir, cwd=workdir)
    (out,) = (workdir / "outputs" / "modality_gap" / "kl").iterdir()
    return workdir, out


def test_kl_experiment_trains_with_its_alignment_in_the_total(kl_stage):
    _, out = kl_stage
    records = _loss_records(out)
    assert "align_loss" in records[0]
    _assert_experiment_trained(out, records)


def test_kl_curriculum_starts_from_the_kl_stage_model(kl_stage, cache_dir):
    """Stage 2's first logged LM loss is stage 1's final model on stage 2's data, not the base model's.

    A batch larger than the data makes the first step one batch of every instance, whatever their order.
    """
    workdir, kl_out = kl_stage
    stage_two = [*_fast("modality_gap/kl_curriculum"), "data.num_records=4", "trainer.per_device_train_batch_size=64"]
    xmodal_train(stage_two, cache_dir, cwd=workdir)
    (out,) = (workdir / "outputs" / "modality_gap" / "kl_curriculum").iterdir()
    first = next(record for record in read_metrics(str(out)) if "lm_loss" in record)
    cfg = OmegaConf.load(out / "config.yaml")
    assert os.path.samefile(workdir / cfg.model.path, kl_out / "final")

    processor = load_processor(str(kl_out / "final"))
    dataset, _ = build_train_dataset(cfg, processor)
    assert len(dataset) <= cfg.trainer.per_device_train_batch_size
    batch = MultimodalCollator(processor)([dataset[i] for i in range(len(dataset))])
    inputs = {key: value for key, value in batch.items() if key != "branch"}

    def lm_loss(path) -> float:
        with torch.no_grad():
            return float(AutoModelForImageTextToText.from_pretrained(path).eval()(**inputs).loss)  # HF's token mean

    assert first["lm_loss"] == pytest.approx(lm_loss(kl_out / "final"), rel=1e-4)
    assert abs(first["lm_loss"] - lm_loss(base_model(OmegaConf.load(kl_out / "config.yaml")))) > 1e-3


def test_frozen_teacher_matches_the_shared_one_at_step_one_then_stays_behind(kl_stage, tmp_path, cache_dir):
    """Before the first update the frozen copy is the model itself; afterwards only the shared teacher moves."""
    _, kl_out = kl_stage
    out = tmp_path / "frozen"
    frozen = _train(["loss.terms.align.teacher=frozen"], out, cache_dir, experiment="modality_gap/kl")
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


def test_frozen_teacher_is_refused_under_zero3_with_the_reason(tmp_path, cache_dir):
    args = ["builder=paired", "loss=lm_kl", "loss.terms.align.teacher=frozen", "deepspeed=zero3"]
    command = train_command([*_fast(), *args, f"output_dir={tmp_path / 'run'}"])
    result = subprocess.run(command, env=entry_point_env(cache_dir), capture_output=True, text=True, timeout=600)
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
