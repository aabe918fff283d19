"""Every shipped config composes, resolves and builds what it names; unknown keys fail with a message naming them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AttentionInterface
from transformers.integrations import get_reporting_integration_callbacks

from xmodal.conf.schema import check_schema
from xmodal.core.errors import ConfigError
from xmodal.recipes import CONFIG_DIR
from tests.support.helpers import compose_config
from xmodal.trainers.models.finetuning import component_prefixes
from xmodal.trainers.models.loading import attention_implementation
from xmodal.trainers.lifecycle.runs import build_training_args, metric_callbacks

ROOT_CONFIGS = sorted(
    name[: -len(".yaml")] for name in os.listdir(CONFIG_DIR) if name.endswith(".yaml")
)
GROUP_OPTIONS = sorted(
    (group, os.path.relpath(os.path.join(folder, name), os.path.join(CONFIG_DIR, group))[: -len(".yaml")])
    for group in os.listdir(CONFIG_DIR)
    if os.path.isdir(os.path.join(CONFIG_DIR, group)) and not group.startswith("__")
    for folder, _, names in os.walk(os.path.join(CONFIG_DIR, group))
    for name in names
    if name.endswith(".yaml")
)


# Groups the root config selects; the others (paper_setting/, loaded by the paper experiments) are appended with `+`.
ROOT_GROUPS = {
    next(iter(entry)).split("override ")[-1]
    for entry in OmegaConf.load(os.path.join(CONFIG_DIR, "config.yaml")).defaults
    if not isinstance(entry, str)
}


def _resolve(overrides: list[str], config_name: str = "config") -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in cfg if key != "hydra"}


def test_every_group_has_options():
    groups = {group for group, _ in GROUP_OPTIONS}
    assert {"model", "data", "builder", "loss", "trainer", "deepspeed", "logger", "metrics", "experiment"} <= groups


# Groups that only an entry point's own root config selects, composed under that root (conf/rl.yaml: reward).
ROOT_OF_GROUP = {"reward": "rl"}


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_group_option_composes_and_resolves(group, option):
    root = ROOT_OF_GROUP.get(group, "config")
    resolved = _resolve([f"{'' if group in ROOT_GROUPS or root != 'config' else '+'}{group}={option}"], config_name=root)
    assert resolved["output_dir"]
    assert resolved["trainer"]["output_dir"] == resolved["output_dir"]
    check_schema(OmegaConf.create(resolved))  # every shipped value is one its typed schema allows


@pytest.mark.parametrize("config_name", ROOT_CONFIGS)
def test_root_config_composes_and_resolves(config_name):
    resolved = _resolve([], config_name=config_name)
    assert resolved["seed"] == 42
    check_schema(OmegaConf.create(resolved))


def _options(group: str) -> list[str]:
    return [option for option_group, option in GROUP_OPTIONS if option_group == group]


@pytest.mark.slow  # a fresh process sets up DeepSpeed for each option (a minute on 2 shared cores)
def test_every_deepspeed_option_builds_training_arguments_with_its_auto_values_filled(tmp_path):
    """The "auto" batch, clipping and optimizer values come from the trainer group; only model-sized ones stay."""
    options = [option for option in _options("deepspeed") if option != "none"]  # none: the defaults test below
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.training_args_probe", str(tmp_path), *options],
        capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    resolved = {line["option"]: line["deepspeed"] for line in map(json.loads, result.stdout.splitlines()[-len(options):])}
    assert sorted(resolved) == sorted(options)
    # Filled by the Trainer once it knows the model's hidden size.
    model_sized = {"reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"}
    for option, config in resolved.items():
        assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (3, 2), option
        assert config["train_batch_size"] == 6 and config["gradient_clipping"] == 1.0, option
        assert config["zero_optimization"]["stage"] == (3 if option.startswith("zero3") else 2), option
        assert {key for key, value in config["zero_optimization"].items() if value == "auto"} <= model_sized, option
        if "optimizer" in config:
            assert config["optimizer"]["params"]["lr"] == 1e-3 and "auto" not in json.dumps(config["optimizer"]), option
    offload = resolved["zero3_offload"]["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == offload["offload_param"]["device"] == "cpu"


@pytest.mark.parametrize("option", _options("metrics"))
def test_every_metrics_option_instantiates_its_callbacks(option):
    cfg = compose_config([f"metrics={option}", "output_dir=unused"])
    callbacks = metric_callbacks(cfg.metrics)  # a misspelled or missing constructor argument raises here
    assert [type(callback).__name__ for callback in callbacks] == [
        callback_cfg._target_.rsplit(".", 1)[-1] for _, callback_cfg in sorted(cfg.metrics.items())
    ]


@pytest.mark.parametrize("option", _options("logger"))
def test_every_logger_option_instantiates_its_reporting_callbacks(option, tmp_path):
    cfg = compose_config([f"logger={option}", f"output_dir={tmp_path}"])
    report_to = build_training_args(cfg.trainer, cfg.deepspeed).report_to  # what the Trainer will build its logging callbacks from
    callbacks = [callback() for callback in get_reporting_integration_callbacks(report_to)]
    expected = {"none": [], "tensorboard": ["TensorBoardCallback"], "wandb": ["WandbCallback"]}[option]
    assert [type(callback).__name__ for callback in callbacks] == expected
    assert all(str(value).startswith(str(tmp_path)) for key, value in cfg.logger.env.items() if key.endswith("DIR"))


# The tiny base models' pre-training, cut to a few steps: the config's every stage field still reaches it.
SHORT_STAGE = [
    "model.init.stage.train_records=8",
    "model.init.stage.held_out_records=4",
    "model.init.stage.classifier_steps=1",
    "model.init.stage.caption_steps=1",
    "model.init.stage.batch_size=4",
    "model.init.stage.min_classifier_accuracy=0",
    "model.init.stage.min_caption_exact_match=0",
]


@pytest.mark.parametrize("option", _options("model"))
def test_every_model_option_resolves_to_a_loadable_model(option, tmp_path):
    """Tiny models are built from their config; real ones must name a checkpoint and valid settings."""
    cfg = compose_config([f"model={option}", f"output_dir={tmp_path}", f"cache_dir={tmp_path}"])
    model_cfg = cfg.model
    assert isinstance(getattr(torch, model_cfg.dtype), torch.dtype)
    assert attention_implementation(model_cfg.attn_implementation) in {"eager", *AttentionInterface._global_mapping}
    if model_cfg.init is None:
        assert model_cfg.path and "/" in model_cfg.path  # a hub name or a directory; weights are not loaded here
        return
    assert model_cfg.path is None
    if "stage" in model_cfg.init:
        cfg = compose_config([f"model={option}", f"output_dir={tmp_path}", f"cache_dir={tmp_path}", *SHORT_STAGE])
    torch.manual_seed(0)
    model, processor = instantiate(cfg.model.init, _convert_="all")
    assert set(component_prefixes(model)) == {"vision_tower", "projector", "language_model"}
    assert processor.tokenizer.convert_tokens_to_ids(processor.image_token) != processor.tokenizer.unk_token_id


def test_defaults_build_training_arguments(tmp_path):
    cfg = compose_config([f"output_dir={tmp_path}"])
    args = build_training_args(cfg.trainer, cfg.deepspeed)
    assert args.output_dir == str(tmp_path) and args.remove_unused_columns is False


def test_unknown_override_key_is_rejected_by_name():
    with pytest.raises(ConfigCompositionException, match="not_a_field"):
        compose_config(["trainer.not_a_field=1"])


def test_unknown_trainer_argument_names_the_trainer_group(tmp_path):
    cfg = compose_config([f"output_dir={tmp_path}", "+trainer.learing_rate=0.1"])
    with pytest.raises(ConfigError, match="learing_rate"):
        build_training_args(cfg.trainer, cfg.deepspeed)
