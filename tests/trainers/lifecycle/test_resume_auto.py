"""`resume=auto`: one command for a job's first start and its requeued starts. It starts fresh in an empty
output_dir, continues from the newest complete checkpoint of the same run, begins afresh a start of the same run killed
before its first checkpoint, and never mixes runs: another run's checkpoint (other settings in config.yaml), another
run's files without a checkpoint, or a finished run stop it.
The run's own behaviour (preempted, requeued, resumed) is tested on SLURM (tests/scripts/test_slurm.py) and on
two torchrun nodes (tests/recipes/test_multinode.py)."""

from __future__ import annotations

import shutil

import pytest
from omegaconf import OmegaConf

from tests.support.helpers import FAST, compose_config, read_metrics, xmodal_train
from xmodal.core.errors import ConfigError
from xmodal.recipes import claim_run_directory, open_run_directory
from xmodal.trainers.lifecycle.checkpoints import COMPLETE_MARKER
from xmodal.trainers.lifecycle.preemption import PREEMPTED_MARKER, write_preempted_marker
from xmodal.trainers.lifecycle.run_directory import open_output_dir
from xmodal.trainers.lifecycle.runs import build_training_args


def write_config(cfg) -> None:
    """What a start does on rank 0 before training: the run's config.yaml."""
    open_output_dir(cfg.output_dir, cfg.overwrite, OmegaConf.to_container(cfg, resolve=True))


def _config(output_dir, *overrides: str):
    return compose_config([*FAST, f"output_dir={output_dir}", "resume=auto", *overrides])


def _checkpoint(output_dir, step: int, complete: bool = True):
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / COMPLETE_MARKER).write_text(f"{step}\n")
    return path


def test_auto_starts_fresh_without_a_checkpoint_and_continues_the_newest_complete_one(tmp_path):
    assert claim_run_directory(_config(tmp_path / "missing")) is None
    write_config(_config(tmp_path))  # the first start writes config.yaml
    assert claim_run_directory(_config(tmp_path)) is None
    _checkpoint(tmp_path, 2)
    newest = _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 6, complete=False)  # killed mid-save
    assert claim_run_directory(_config(tmp_path)) == str(newest)


def test_auto_refuses_a_checkpoint_of_a_run_with_other_settings(tmp_path):
    write_config(_config(tmp_path))
    _checkpoint(tmp_path, 2)
    with pytest.raises(ConfigError, match=r"resume=auto: .*config.yaml belongs to a run with other settings "
                                          r"\(trainer.learning_rate: 0.001 -> 0.002\)"):
        claim_run_directory(_config(tmp_path, "trainer.learning_rate=2e-3"))
    # resume and overwrite are not settings of the run: the first start ran with resume=false.
    write_config(compose_config([*FAST, f"output_dir={tmp_path}", "resume=false"]))
    assert claim_run_directory(_config(tmp_path)) == str(tmp_path / "checkpoint-2")


def test_auto_refuses_another_runs_files_without_a_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(ConfigError, match="already holds a run"):
        claim_run_directory(_config(tmp_path))


def test_the_start_auto_begins_afresh_replaces_the_killed_starts_files(tmp_path):
    """In-process, as the recipes open their run directory: the killed start's log and unfinished checkpoint go,
    the new start's config.yaml is written."""
    cfg = _config(tmp_path, f"cache_dir={tmp_path / 'cache'}")
    write_config(cfg)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    _checkpoint(tmp_path, 2, complete=False)
    assert claim_run_directory(cfg) is None
    open_run_directory(cfg, build_training_args(cfg.trainer, cfg.deepspeed))
    assert sorted(path.name for path in tmp_path.iterdir() if path.name != "cache") == ["config.yaml"]


@pytest.mark.slow
def test_auto_begins_afresh_a_start_of_the_same_run_killed_before_its_first_checkpoint(tmp_path, cache_dir):
    """A start killed (SIGKILL, a lost node) after its first log line but before any checkpoint: the same command
    trains the run from the beginning, and metrics.jsonl holds that start's steps only once."""
    args = [*FAST, f"output_dir={tmp_path}", "resume=auto", "trainer.max_steps=3", "trainer.logging_steps=1",
            "trainer.save_strategy=no"]
    xmodal_train(args, cache_dir)
    first = read_metrics(str(tmp_path))
    shutil.rmtree(tmp_path / "final")  # what a kill just before the end leaves
    _checkpoint(tmp_path, 2, complete=False)  # and a save it cut short
    xmodal_train(args, cache_dir)
    assert [row["step"] for row in read_metrics(str(tmp_path))] == [row["step"] for row in first]
    assert (tmp_path / "final").is_dir() and not (tmp_path / "checkpoint-2").exists()


def test_auto_never_begins_afresh_a_finished_run_or_another_runs_start(tmp_path):
    write_config(_config(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(ConfigError, match="already holds a run"):
        claim_run_directory(_config(tmp_path, "trainer.learning_rate=2e-3"))
    assert claim_run_directory(_config(tmp_path)) is None  # the same run's start: begun afresh
    (tmp_path / "final").mkdir()
    with pytest.raises(ConfigError, match="already holds a run"):
        claim_run_directory(_config(tmp_path))


def test_a_new_start_clears_the_preempted_marker(tmp_path):
    cfg = _config(tmp_path)
    write_preempted_marker(str(tmp_path), 3, str(tmp_path / "checkpoint-3"))
    assert (tmp_path / PREEMPTED_MARKER).read_text() == (
        f'{{"step": 3, "checkpoint": "{tmp_path / "checkpoint-3"}"}}\n'
    )
    write_config(cfg)
    assert not (tmp_path / PREEMPTED_MARKER).exists()
