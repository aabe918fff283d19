"""Helpers for the core tests: Hydra composition, launching the real entry point, reading metrics."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from xmodal.recipes import CONFIG_DIR

# The real PGPS9K sample lies beside the checkout (as in tests/data_builders).
PGPS9K_SAMPLE = os.environ.get(
    "XMODAL_PGPS9K_SAMPLE",
    os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "pgps9k_sample"),
)

# A few steps on a few records: every test run of the recipe is seconds long.
FAST = ["debug=fast", "data.num_records=48", "model=tiny_llava"]


def compose_config(overrides: list[str], config_name: str = "config"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def entry_point_env(cache_dir: str) -> dict[str, str]:
    return {**os.environ, "XMODAL_CACHE": cache_dir, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}


def run_entry_point(command: list[str], cache_dir: str, timeout: int = 600, cwd=None) -> subprocess.CompletedProcess:
    """Run an installed console script (or torchrun) as a user would, failing with its output on error."""
    result = subprocess.run(
        command, env=entry_point_env(cache_dir), capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def train_command(args: list[str], processes: int = 1) -> list[str]:
    """`xmodal-train args`, or the same under `torchrun` with `processes` ranks."""
    if processes == 1:
        return [os.path.join(os.path.dirname(sys.executable), "xmodal-train"), *args]
    return [
        os.path.join(os.path.dirname(sys.executable), "torchrun"),
        f"--nproc_per_node={processes}",
        "--no-python",
        "xmodal-train",
        *args,
    ]


def xmodal_train(args: list[str], cache_dir: str, processes: int = 1, timeout: int = 600, cwd=None) -> None:
    """`xmodal-train args`; `cwd` is where relative output_dirs land. One process: the console script's own `main`
    in this process (a Python, torch and transformers start-up saved per run; the README's commands test starts
    the installed scripts). Several processes, DeepSpeed or wandb: under torchrun / a process of its own, so that
    no process group, and no wandb service and global run, outlives the run in this one."""
    if processes > 1 or any(arg.startswith(("deepspeed=", "logger=wandb")) for arg in args):
        run_entry_point(train_command(args, processes), cache_dir, timeout, cwd)
        return
    from xmodal.recipes.finetune import main

    saved_argv, saved_path, saved_environment = sys.argv, list(sys.path), dict(os.environ)
    os.environ.update(entry_point_env(cache_dir))
    sys.argv = ["xmodal-train", *args]
    try:
        with contextlib.chdir(cwd or os.getcwd()):
            main()
    except SystemExit as exit:  # the console script's exit on a user error (its message is in the captured output)
        pytest.fail(f"xmodal-train {' '.join(args)} exited {exit.code}")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.environ.clear()
        os.environ.update(saved_environment)
        GlobalHydra.instance().clear()


def read_metrics(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def loss_by_step(output_dir: str, key: str = "lm_loss") -> dict[int, float]:
    return {record["step"]: record[key] for record in read_metrics(output_dir) if key in record}


def move_every_floating_tensor(model, seed: int = 0) -> None:
    """Add a random offset in [0.5, 1.5) to every floating tensor of `model`, in place. A fresh init's norm weights
    and biases are ones and zeros on every seed, so a load that skipped them would still compare equal to a fresh
    model's; after this no tensor equals its init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype) + 0.5)
