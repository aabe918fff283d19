"""Every shipped config composes and resolves; unknown keys fail with a message naming them."""

from __future__ import annotations

import os

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from recipes import CONFIG_DIR
from data_builders.errors import ConfigError
from recipes.finetune import build_training_args
from tests.core.helpers import compose_config

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


@pytest.mark.parametrize("config_name", ROOT_CONFIGS)
def test_root_config_composes_and_resolves(config_name):
    assert _resolve([], config_name=config_name)["seed"] == 42


def test_defaults_build_training_arguments(tmp_path):
    cfg = compose_config([f"output_dir={tmp_path}"])
    args = build_training_args(cfg)
    assert args.output_dir == str(tmp_path) and args.remove_unused_columns is False


def test_unknown_override_key_is_rejected_by_name():
    with pytest.raises(ConfigCompositionException, match="not_a_field"):
        compose_config(["trainer.not_a_field=1"])


def test_unknown_trainer_argument_names_the_trainer_group(tmp_path):
    cfg = compose_config([f"output_dir={tmp_path}", "+trainer.learing_rate=0.1"])
    with pytest.raises(ConfigError, match="learing_rate"):
        build_training_args(cfg)
