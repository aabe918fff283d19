"""Resume restores exactly what was saved: the full weights under transformers 5 key names, strictly, through the recipe."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file

from tests.support.helpers import FAST, compose_config, move_every_floating_tensor, read_metrics, xmodal_train
from xmodal.trainers.lifecycle.callbacks import drop_rows_after
from xmodal.trainers.models.finetuning import FinetuneSettings, apply_finetuning
from xmodal.trainers.lifecycle.resume import CheckpointMismatchError, load_full_weights, verify_checkpoint_weights

STEP_KEYS = ("loss", "grad_norm", "learning_rate", "lm_loss")


def _tiny_model(model: str, seed: int):
    torch.manual_seed(seed)
    model, _ = instantiate(compose_config([*FAST, f"model={model}"]).model.init, _convert_="all")
    return model


@pytest.mark.parametrize("model", ["tiny_llava", "tiny_qwen2_vl"])
def test_full_weights_load_back_by_their_saved_names(model, tmp_path):
    saved = _tiny_model(model, seed=0)
    saved.save_pretrained(tmp_path)
    file_keys = set(load_file(tmp_path / "model.safetensors"))
    # The point of the loader: transformers 5 saves under the architecture's original names, not the module names.
    assert file_keys - set(saved.state_dict())

    restored = _tiny_model(model, seed=1)
    move_every_floating_tensor(restored)  # a fresh init's norms and biases are ones and zeros on every seed
    differing = {name for name, tensor in saved.state_dict().items() if not torch.equal(restored.state_dict()[name], tensor)}
    floating = {name for name, tensor in saved.state_dict().items() if tensor.is_floating_point()}
    assert differing == floating and any(saved.state_dict()[name].dim() == 1 for name in floating)
    load_full_weights(restored, str(tmp_path))
    for name, tensor in saved.state_dict().items():  # every tensor, 1-D norm weights and biases included
        assert torch.equal(restored.state_dict()[name], tensor), name


def test_a_missing_or_unexpected_weight_stops_the_resume(tmp_path):
    model = _tiny_model("tiny_llava", seed=0)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = sorted(weights)[0]
    save_file({key: value for key, value in weights.items() if key != dropped}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=f"1 missing, e.g. {dropped}"):
        load_full_weights(model, str(tmp_path))

    save_file({**weights, "extra.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="1 unexpected, e.g. extra.weight"):
        verify_checkpoint_weights(model, str(tmp_path))

    save_file({**weights, dropped: torch.zeros(3, 1)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=f"weight '{dropped}' has shape \\(3, 1\\)"):
        load_full_weights(model, str(tmp_path))


def test_a_lora_run_refuses_a_full_finetune_checkpoint(tmp_path):
    _tiny_model("tiny_llava", seed=0).save_pretrained(tmp_path)
    lora = apply_finetuning(_tiny_model("tiny_llava", seed=0), FinetuneSettings(mode="lora"))
    with pytest.raises(CheckpointMismatchError, match="written by a full fine-tune run; this run is a LoRA"):
        verify_checkpoint_weights(lora, str(tmp_path))


@pytest.mark.slow
def test_a_resumed_full_finetune_continues_the_curriculum_exactly(tmp_path, cache_dir):
    """The default (single process, full fine-tune), in curriculum order: resumed steps equal uninterrupted ones."""
    # The switch to vision-centric instances falls inside the resumed steps: a lost position would show.
    common = [*FAST, "builder=curriculum", "builder.switch_step=4", "trainer.max_steps=6", "trainer.save_steps=3"]
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    xmodal_train([*common, f"output_dir={uninterrupted}"], cache_dir)
    resumed.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-3", resumed / "checkpoint-3")
    xmodal_train([*common, f"output_dir={resumed}", "resume=true"], cache_dir)

    expected = {row["step"]: row for row in read_metrics(str(uninterrupted)) if "loss" in row and row["step"] > 3}
    continued = {row["step"]: row for row in read_metrics(str(resumed)) if "loss" in row}
    assert sorted(continued) == sorted(expected) == [4, 5, 6]
    for step, row in continued.items():
        for key in STEP_KEYS:
            assert row[key] == pytest.approx(expected[step][key], rel=1e-6), (step, key)
    final = load_file(uninterrupted / "final" / "model.safetensors")
    final_resumed = load_file(resumed / "final" / "model.safetensors")
    assert final.keys() == final_resumed.keys()
    assert all(torch.equal(final[key], final_resumed[key]) for key in final)

    # Resuming the finished run (as after a kill while final/ was saved) trains no step past max_steps.
    xmodal_train([*common, f"output_dir={resumed}", "resume=true"], cache_dir)
    assert [row["step"] for row in read_metrics(str(resumed)) if "loss" in row] == [4, 5, 6]
    again = load_file(resumed / "final" / "model.safetensors")
    assert all(torch.equal(final[key], again[key]) for key in final)


def test_resume_drops_the_metrics_rows_written_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "train_runtime": 1.0}, {"step": 3, "loss": 1.0}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 4, "lo')  # died mid-line
    drop_rows_after(str(path), 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]
