"""One run per output_dir: sweeps give each job its own directory, a fresh run never mixes with an old one, secrets
stay out of the run's files, weights are safetensors. Runs the real `xmodal-train` main in-process (Hydra + Trainer)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra

from xmodal.core.errors import ConfigError
from xmodal.recipes import CONFIG_DIR, finetune
from tests.support.helpers import FAST, compose_config, read_metrics
from xmodal.core.console import USER_ERROR_STATUS
from xmodal.trainers.models import load_model
from xmodal.trainers.lifecycle.run_directory import REDACTED, claim_output_dir, job_output_dir, redact_secrets


@pytest.fixture(autouse=True)
def _fresh_hydra():
    yield
    GlobalHydra.instance().clear()


def train(monkeypatch, *overrides: str, multirun: bool = False) -> None:
    monkeypatch.setattr(sys, "argv", ["xmodal-train", *(["-m"] if multirun else []), *FAST, *overrides])
    finetune.main()


def steps(run: Path) -> list[int]:
    return [record["step"] for record in read_metrics(str(run)) if "lm_loss" in record]


@pytest.mark.slow  # xmodal-train end to end (in-process)
def test_every_job_of_a_sweep_keeps_its_own_run(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(monkeypatch, "seed=1,2", multirun=True)
    sweep = tmp_path / "outputs" / "tiny_llava-synthetic-single-lm"
    assert sorted(os.listdir(tmp_path)) == ["outputs"]  # multirun.yaml went beside the runs
    assert (sweep / "multirun.yaml").is_file()
    first_losses = []
    for seed in (1, 2):
        run = sweep / f"seed={seed}"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["seed"] == seed and config["output_dir"] == f"outputs/tiny_llava-synthetic-single-lm/seed={seed}"
        assert steps(run) == [1, 2, 3, 4]
        first_losses.append(read_metrics(str(run))[0]["lm_loss"])
        assert (run / "final" / "model.safetensors").is_file()
    assert first_losses[0] != first_losses[1]  # two seeds, two runs: neither replaced the other


@pytest.mark.slow  # xmodal-train end to end (in-process)
def test_a_fresh_run_refuses_a_directory_holding_a_run_until_overwrite(tmp_path, cache_dir, monkeypatch, capfd):
    run = tmp_path / "run"
    train(monkeypatch, f"output_dir={run}", "logger=tensorboard")
    metrics_before = (run / "metrics.jsonl").read_text()

    with pytest.raises(SystemExit) as refused:
        train(monkeypatch, f"output_dir={run}", "trainer.learning_rate=0.01")
    assert refused.value.code == USER_ERROR_STATUS
    assert "already holds a run" in capfd.readouterr().err
    assert (run / "metrics.jsonl").read_text() == metrics_before and (run / "tensorboard").is_dir()

    train(monkeypatch, f"output_dir={run}", "trainer.learning_rate=0.01", "overwrite=true")
    assert not (run / "tensorboard").exists()  # nothing of the old run is left
    assert steps(run) == [1, 2, 3, 4]
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["learning_rate"] == 0.01

    train(monkeypatch, f"output_dir={run}", "trainer.learning_rate=0.01", "resume=true", "trainer.max_steps=6")
    assert steps(run)[-2:] == [5, 6]  # resume continues the run in place: not an overwrite


def test_weights_are_safetensors(tmp_path, cache_dir, monkeypatch):
    run = tmp_path / "run"
    train(monkeypatch, f"output_dir={run}", "finetune=lora")
    files = [path.relative_to(run).as_posix() for path in run.rglob("*") if path.is_file()]
    weights = [path for path in files if "model" in path.rsplit("/", 1)[-1]]  # optimizer/RNG/arguments files aside
    assert {"final/model.safetensors", "adapter/adapter_model.safetensors", "checkpoint-4/adapter_model.safetensors"} <= set(weights)
    assert all(path.endswith((".safetensors", ".safetensors.index.json")) for path in weights), weights


@pytest.mark.slow  # xmodal-train end to end (in-process)
def test_the_wandb_key_never_reaches_the_run_files_or_the_console(tmp_path, cache_dir, monkeypatch, capfd):
    key = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeed"
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    train(monkeypatch, f"output_dir={run}", "logger=wandb", "+logger.env.WANDB_API_KEY=${oc.env:WANDB_API_KEY}", "+api_key=" + key)
    output = "".join(capfd.readouterr())
    files = [path for path in run.rglob("*") if path.is_file()]
    assert run / "config.yaml" in files and run / "metrics.jsonl" in files and any("wandb" in str(p) for p in files)
    leaked = [str(path) for path in files if key.encode() in path.read_bytes()]
    assert leaked == [] and key not in output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["logger"]["env"]["WANDB_API_KEY"] == REDACTED and config["api_key"] == REDACTED


def test_redaction_keeps_everything_that_is_not_a_secret(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    config = {"model": {"pad_token": "<pad>", "path": "hf_secret"}, "wandb_token": "x", "max_new_tokens": 8, "tags": ["a", "hf_secret"]}
    assert redact_secrets(config) == {
        "model": {"pad_token": "<pad>", "path": REDACTED},
        "wandb_token": REDACTED,
        "max_new_tokens": 8,
        "tags": ["a", REDACTED],
    }
    assert json.dumps(redact_secrets({"nested": [{"password": ""}]})) == '{"nested": [{"password": ""}]}'


def test_code_shipped_with_a_checkpoint_runs_only_with_trust_remote_code(tmp_path):
    """A checkpoint whose config maps the Auto classes to its own module: that module runs only when trusted."""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "xmodal_remote_test",
        "auto_map": {"AutoConfig": "remote_code.RemoteConfig", "AutoModelForImageTextToText": "remote_code.RemoteModel"},
    }))
    (tmp_path / "remote_code.py").write_text(
        f"import pathlib\npathlib.Path({str(tmp_path / 'ran')!r}).write_text('ran')\n"  # transformers runs a copy
        "from transformers import PretrainedConfig\n"
        "class RemoteConfig(PretrainedConfig):\n    model_type = 'xmodal_remote_test'\n"
    )
    with pytest.raises(ConfigError, match="model.trust_remote_code=true"):
        load_model(str(tmp_path), "float32", "sdpa")
    assert not (tmp_path / "ran").exists()
    with pytest.raises(Exception):  # the module has no model class; what matters is that it ran
        load_model(str(tmp_path), "float32", "sdpa", trust_remote_code=True)
    assert (tmp_path / "ran").exists()
    for name in sorted(path.stem for path in Path(CONFIG_DIR, "model").glob("*.yaml")):
        assert compose_config([f"model={name}"]).model.trust_remote_code is False, name


def test_claiming_returns_the_directory_and_the_checkpoint_without_touching_a_config(tmp_path):
    run = tmp_path / "run"
    assert job_output_dir(str(run)) == str(run)  # a single job (not a sweep) keeps its directory
    assert claim_output_dir(str(run), resume=False, overwrite=False, resolved_config={}) is None
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "xmodal_checkpoint_complete").write_text("")
    assert claim_output_dir(str(run), resume=True, overwrite=False, resolved_config={}) == str(run / "checkpoint-2")
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint-2\)"):
        claim_output_dir(str(run), resume=False, overwrite=False, resolved_config={})
