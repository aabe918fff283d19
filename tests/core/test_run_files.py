"""Run-directory safety: atomic files and directories, metrics lines, and which checkpoint a resume trusts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from data_builders.atomic import append_jsonl, atomic_directory, atomic_write_text, publish_directory
from data_builders.errors import ConfigError
from trainers.callbacks import COMPLETE_MARKER, latest_complete_checkpoint, resolve_resume


def test_atomic_write_replaces_whole_files_and_leaves_no_staging(tmp_path):
    path = tmp_path / "config.yaml"
    atomic_write_text(str(path), "a: 1\n")
    atomic_write_text(str(path), "a: 2\n")
    assert path.read_text() == "a: 2\n"
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_a_failed_directory_write_keeps_the_previous_one(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(str(target)) as staging:
        Path(staging, "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(str(tmp_path / "other")) as staging:
            Path(staging, "weights").write_text("partial")
            raise RuntimeError("crash mid-save")
    assert (target / "weights").read_text() == "v1"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_publish_replaces_an_older_directory_only_when_complete(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "old").write_text("old")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "new").write_text("new")
    publish_directory(str(staging), str(final))
    assert os.listdir(final) == ["new"] and sorted(os.listdir(tmp_path)) == ["final"]


def test_metrics_lines_append(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(str(path), {"step": 1, "loss": 2.0})
    append_jsonl(str(path), {"step": 2, "loss": 1.5})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def _checkpoint(root, step: int, complete: bool):
    path = root / f"checkpoint-{step}"
    path.mkdir()
    if complete:
        (path / COMPLETE_MARKER).write_text(f"{step}\n")
    return str(path)


def test_resume_trusts_only_completed_checkpoints(tmp_path):
    _checkpoint(tmp_path, 10, complete=True)
    newest_complete = _checkpoint(tmp_path, 20, complete=True)
    _checkpoint(tmp_path, 30, complete=False)  # a crash while saving step 30
    assert latest_complete_checkpoint(str(tmp_path)) == newest_complete
    assert resolve_resume(True, str(tmp_path)) == newest_complete
    assert resolve_resume(False, str(tmp_path)) is None
    assert resolve_resume(newest_complete, str(tmp_path)) == newest_complete


def test_resume_without_a_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path)):
        resolve_resume(True, str(tmp_path))
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        resolve_resume(str(tmp_path / "missing"), str(tmp_path))
