"""Resume restores exactly what was saved: the full weights under transformers 5 key names, strictly, through the recipe."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file
from transformers import MixtralConfig, MixtralForCausalLM

from tests.support.helpers import FAST, compose_config, move_every_floating_tensor, read_metrics, xmodal_train
from xmodal.trainers.lifecycle.callbacks import drop_rows_after
from xmodal.trainers.models.finetuning import FinetuneSettings, apply_finetuning
from xmodal.trainers.lifecycle.resume import (
    CheckpointMismatchError,
    checkpoint_weight_files,
    load_full_weights,
    verify_checkpoint_weights,
)

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


def test_weights_the_model_keeps_out_of_its_checkpoints_are_neither_expected_nor_loaded(tmp_path):
    saved = _tiny_model("tiny_llava", seed=0)
    kept_out = "model.language_model.norm.weight"
    # transformers skips the names it holds (the name of a weight the model lacks too) when it saves
    saved._keys_to_ignore_on_save = {kept_out, "model.no_such.weight"}
    saved.save_pretrained(tmp_path)
    restored = _tiny_model("tiny_llava", seed=1)
    restored._keys_to_ignore_on_save = set(saved._keys_to_ignore_on_save)
    move_every_floating_tensor(restored)
    own = restored.state_dict()[kept_out].clone()
    verify_checkpoint_weights(restored, str(tmp_path))
    load_full_weights(restored, str(tmp_path))
    for name, tensor in saved.state_dict().items():
        assert torch.equal(restored.state_dict()[name], own if name == kept_out else tensor), name


def test_an_architecture_whose_weights_are_converted_on_save_is_refused(tmp_path):
    # Mixtral fuses its experts in memory and saves them split (one tensor per expert): copying into the split
    # tensors would not reach the model
    config = MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1)
    model = MixtralForCausalLM(config)
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"^resume: 'model\.layers\.0\.block_sparse_moe\.experts\.\d\.w\d\."
                       r"weight' is converted \(not renamed\) between the checkpoint and the model; this architecture "
                       r"cannot be resumed in place$"):
        load_full_weights(model, str(tmp_path))


def test_a_missing_or_unexpected_weight_stops_the_resume(tmp_path):
    model = _tiny_model("tiny_llava", seed=0)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = sorted(weights)[0]
    save_file({key: value for key, value in weights.items() if key != dropped}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as refused:
        load_full_weights(model, str(tmp_path))
    assert str(refused.value) == (f"resume: {tmp_path} does not hold the weights of this run's model (1 missing, "
                                  f"e.g. {dropped}); resume with the model and finetune settings that wrote it")

    save_file({**weights, "extra.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as refused:
        verify_checkpoint_weights(model, str(tmp_path))
    assert str(refused.value) == (f"resume: {tmp_path} does not hold the weights of this run's model (1 unexpected, "
                                  "e.g. extra.weight); resume with the model and finetune settings that wrote it")

    four = sorted(weights)[:4]  # both kinds, and at most three names of each
    save_file({**{key: value for key, value in weights.items() if key not in four}, "extra.weight": torch.zeros(2)},
              tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            f"(4 missing, e.g. {four[0]}, {four[1]}, {four[2]}; 1 unexpected, e.g. extra.weight); resume with")):
        verify_checkpoint_weights(model, str(tmp_path))

    save_file({**weights, dropped: torch.zeros(3, 1)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=f"weight '{dropped}' has shape \\(3, 1\\)"):
        load_full_weights(model, str(tmp_path))


def test_a_lora_run_refuses_a_full_finetune_checkpoint_and_a_full_finetune_a_lora_one(tmp_path):
    full, adapter = tmp_path / "full", tmp_path / "adapter"
    _tiny_model("tiny_llava", seed=0).save_pretrained(full)
    lora = apply_finetuning(_tiny_model("tiny_llava", seed=0), FinetuneSettings(mode="lora"))
    lora.save_pretrained(adapter)
    with pytest.raises(CheckpointMismatchError) as refused:
        verify_checkpoint_weights(lora, str(full))
    assert str(refused.value) == f"resume: {full} was written by a full fine-tune run; this run is a LoRA (finetune=...)"
    with pytest.raises(CheckpointMismatchError) as refused:
        verify_checkpoint_weights(_tiny_model("tiny_llava", seed=0), str(adapter))
    assert str(refused.value) == f"resume: {adapter} was written by a LoRA run; this run is a full fine-tune (finetune=...)"


def test_a_lora_checkpoint_is_checked_by_its_adapter_weights(tmp_path):
    lora = apply_finetuning(_tiny_model("tiny_llava", seed=0), FinetuneSettings(mode="lora"))
    lora.save_pretrained(tmp_path)
    verify_checkpoint_weights(lora, str(tmp_path))  # its own adapter: accepted
    weights = load_file(tmp_path / "adapter_model.safetensors")
    dropped = sorted(weights)[0]
    save_file({key: value for key, value in weights.items() if key != dropped}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=f"the adapter weights of this run's model \\(1 missing, e.g. {dropped}\\)"):
        verify_checkpoint_weights(lora, str(tmp_path))


def test_a_sharded_checkpoint_loads_back_from_every_shard(tmp_path):
    saved = _tiny_model("tiny_llava", seed=0)
    size = sum(tensor.numel() * tensor.element_size() for tensor in saved.state_dict().values())
    saved.save_pretrained(tmp_path, max_shard_size=size // 3)
    shards = sorted(path.name for path in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    assert checkpoint_weight_files(str(tmp_path), peft=False) == [str(tmp_path / shard) for shard in shards]
    restored = _tiny_model("tiny_llava", seed=1)
    move_every_floating_tensor(restored)
    verify_checkpoint_weights(restored, str(tmp_path))
    load_full_weights(restored, str(tmp_path))
    for name, tensor in saved.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name


def test_without_weight_files_the_check_passes_and_the_loader_refuses(tmp_path):
    # a DeepSpeed ZeRO-3 checkpoint saved without gathered 16-bit weights has no weight file to compare
    model = _tiny_model("tiny_llava", seed=0)
    assert checkpoint_weight_files(str(tmp_path), peft=False) == checkpoint_weight_files(str(tmp_path), peft=True) == []
    verify_checkpoint_weights(model, str(tmp_path))
    with pytest.raises(CheckpointMismatchError) as refused:
        load_full_weights(model, str(tmp_path))
    assert str(refused.value) == f"resume: {tmp_path} holds no model.safetensors (or sharded index)"


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
