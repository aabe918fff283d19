"""The paper recipes: real settings one word away (composed, no weights loaded) and curriculum schedules that are
exactly as long as the run, failing at start when they cannot be."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from xmodal.core.errors import ConfigError
from xmodal.recipes import instances_of
from xmodal.recipes import CONFIG_DIR
from xmodal.recipes import finetune
from xmodal.recipes.finetune import build_train_dataset
from tests.support.helpers import compose_config, read_metrics, xmodal_train

MODALITY_GAP = ["full_text", "no_text", "mix", "curriculum", "kl", "kl_mix", "kl_curriculum"]
MODAL_IMBALANCE = {"it": "DatasetMixBuilder", "hit": "InstanceMixBuilder"}
QWEN = {"path": "Qwen/Qwen2.5-VL-7B-Instruct", "dtype": "bfloat16"}


def compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # output_dir and model.path interpolate ${hydra:runtime.choices...}
    return cfg


def deepspeed_file(name):
    return OmegaConf.to_container(OmegaConf.load(os.path.join(CONFIG_DIR, "deepspeed", f"{name}.yaml")))


def plain(node):
    return OmegaConf.to_container(node, resolve=True)


@pytest.mark.parametrize("recipe", MODALITY_GAP)
def test_modality_gap_recipes_compose_to_the_released_setting(recipe):
    cfg = compose([f"experiment=modality_gap/{recipe}", "setting=paper", "data=pgps9k", "data.root=/data/PGPS9K"])
    stage_one = "outputs/modality_gap/kl/qwen2_5_vl_7b-pgps9k/final"  # kl_curriculum starts from kl's final/
    expected_model = dict(QWEN, path=stage_one) if recipe == "kl_curriculum" else QWEN
    assert {key: cfg.model[key] for key in expected_model} == expected_model
    assert (cfg.finetune.mode, cfg.finetune.freeze_vision_tower) == ("full", False)
    trainer = plain(cfg.trainer)
    assert {key: trainer[key] for key in ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay")} == {
        "learning_rate": 1e-6, "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.01,
    }
    assert (trainer["max_grad_norm"], trainer["bf16"]) == (1.0, True)
    assert plain(cfg.deepspeed) == deepspeed_file("zero3")
    assert (cfg.data.split, cfg.output_dir) == ("train", f"outputs/modality_gap/{recipe}/qwen2_5_vl_7b-pgps9k")


@pytest.mark.parametrize("recipe", MODALITY_GAP)
def test_modality_gap_recipes_keep_their_embedded_setting(recipe):
    cfg = compose([f"experiment=modality_gap/{recipe}"])
    assert cfg.model.init is not None and not cfg.trainer.bf16 and plain(cfg.deepspeed) == {}
    assert cfg.trainer.learning_rate == 1e-3 and cfg.finetune.freeze_vision_tower


@pytest.mark.parametrize("recipe", sorted(MODAL_IMBALANCE))
def test_modal_imbalance_recipes_compose_to_their_real_setting(recipe):
    data = [
        "data=llava_instruct_mixture", "data.sources.image.path=/data/llava_instruct_150k.json",
        "data.sources.image.image_folder=/data/coco/train2017", "data.sources.text.path=/data/text.json",
    ]
    cfg = compose([f"experiment=modal_imbalance/{recipe}", "setting=paper", *data])
    assert cfg.builder._target_.endswith(MODAL_IMBALANCE[recipe])
    assert {key: cfg.model[key] for key in QWEN} == QWEN
    assert (cfg.finetune.mode, cfg.finetune.freeze_language_model, cfg.trainer.bf16) == ("lora", True, True)
    assert plain(cfg.deepspeed) == deepspeed_file("zero2")
    sources = {name: source._target_.rsplit(".", 1)[-1] for name, source in cfg.data.sources.items()}
    assert sources == {"image": "LlavaInstructSource", "text": "TextOnlySource"}
    assert cfg.output_dir == f"outputs/modal_imbalance/{recipe}/qwen2_5_vl_7b-llava_instruct_mixture"


def test_modal_imbalance_embedded_variants_train_on_the_same_instructions():
    small = ["data.sources.image.num_records=6", "data.sources.text.num_records=6"]
    configs = {recipe: compose([f"experiment=modal_imbalance/{recipe}", *small]) for recipe in MODAL_IMBALANCE}
    assert {cfg.finetune.mode for cfg in configs.values()} == {"lora"} and plain(configs["it"].deepspeed) == {}
    built = {recipe: instances_of(cfg) for recipe, cfg in configs.items()}

    def instructions(instances):
        return Counter(part["id"] for instance in instances for part in instance["meta"].get("parts") or [instance])

    assert instructions(built["it"].instances) == instructions(built["hit"].instances)
    assert len(built["hit"].instances) == len(built["it"].instances) // 2  # two instructions per instance


# -- curriculum schedules ----------------------------------------------------------------------------------------
def curriculum(*overrides):
    return compose(["experiment=modality_gap/curriculum", "data.num_records=10", *overrides])


@pytest.mark.parametrize("world_size", [1, 2])
def test_curriculum_lays_out_exactly_what_the_trainer_reads(world_size, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    cfg = curriculum("trainer.max_steps=6", "trainer.per_device_train_batch_size=2", "trainer.gradient_accumulation_steps=2")
    conditions = [instance["condition"] for instance in instances_of(cfg).instances]
    read = 6 * 2 * 2 * world_size  # steps x batch x accumulation x ranks
    assert conditions == ["text_centric"] * (read // 2) + ["vision_centric"] * (read // 2)


def test_an_overlong_instance_of_the_schedule_stops_the_run_instead_of_shifting_it(tmp_path):
    from xmodal.trainers.models.tiny import build_tiny_llava

    tiny = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4)
    _, processor = build_tiny_llava(text=dict(tiny, num_kv_heads=2), vision=dict(tiny, image_size=32, patch_size=8))
    schedule = ["trainer.max_steps=2", "trainer.per_device_train_batch_size=2", f"cache_dir={tmp_path}"]
    lengths = [len(row["input_ids"]) for row in build_train_dataset(curriculum(*schedule), processor)[0]]
    assert len(lengths) == 4 and min(lengths) < max(lengths)  # text-centric prompts state the facts: longer
    limit = max(lengths) - 1  # drops the longest instances only, which would shift the switch
    with pytest.raises(ConfigError, match="of the ordered schedule.*raise encoding.max_length"):
        build_train_dataset(curriculum(*schedule, f"encoding.max_length={limit}"), processor)


def test_a_schedule_the_run_cannot_honour_stops_xmodal_train_at_start(tmp_path, cache_dir):
    out = tmp_path / "run"
    cfg = compose_config([
        "experiment=modality_gap/curriculum", "model=tiny_llava", "data.num_records=10", "builder.switch_step=300",
        f"output_dir={out}",
    ])
    with pytest.raises(ConfigError, match="the curriculum switch must fall inside the run") as refusal:
        finetune.train(cfg)
    assert "builder.switch_step=300" in str(refusal.value) and "trainer.max_steps=200" in str(refusal.value)
    assert not (out / "final").exists() and not list(out.glob("checkpoint-*"))


@pytest.mark.slow
def test_a_curriculum_run_reads_its_schedule_once(tmp_path, cache_dir):
    # 4 steps x 2 examples over 3 records: the schedule cycles 3 reshuffled passes and the run ends with epoch 1.
    out = tmp_path / "run"
    xmodal_train(
        ["experiment=modality_gap/curriculum", "debug=fast", "model=tiny_llava", "data.num_records=3", f"output_dir={out}"],
        cache_dir,
    )
    epochs = [record["epoch"] for record in read_metrics(str(out)) if "epoch" in record]
    assert max(epochs) == pytest.approx(1.0)
