"""Helpers for the RL tests: the real xmodal-rl config and trainer, and its entry point as a user runs it."""

from __future__ import annotations

import os
import sys

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from xmodal.recipes import CONFIG_DIR
from xmodal.recipes.rl import build_trainer
from tests.support.helpers import run_entry_point

# Few records, two prompts of four rollouts per step, short completions: seconds per step on CPU.
SMALL = [
    "data.num_records=32",
    "rl.grpo.num_generations=4",
    "trainer.per_device_train_batch_size=8",
    "rl.grpo.max_completion_length=6",
]


def compose_rl(overrides: list[str]):
    """conf/rl.yaml with `overrides`; `${hydra:...}` interpolations (run directories) resolve as in a run."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="rl", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def build_rl_trainer(output_dir, overrides: list[str]):
    cfg = compose_rl([*SMALL, f"output_dir={output_dir}", *overrides])
    trainer, _, _ = build_trainer(cfg)
    return trainer


def xmodal_rl(args: list[str], cache_dir: str, processes: int = 1, timeout: int = 600):
    """`python -m xmodal.recipes.rl` (until the xmodal-rl console script is installed), or torchrun -m for several."""
    if processes == 1:
        command = [sys.executable, "-m", "xmodal.recipes.rl", *args]
    else:
        torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
        command = [torchrun, f"--nproc_per_node={processes}", "-m", "xmodal.recipes.rl", *args]
    return run_entry_point(command, cache_dir, timeout)
