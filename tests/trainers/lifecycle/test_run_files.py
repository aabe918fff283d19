"""Run-directory safety: atomic files and directories, metrics lines, and which checkpoint a resume trusts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from xmodal.core.atomic import (
    append_jsonl,
    atomic_directory,
    atomic_write_text,
    publish_directory,
    published_directory,
)
from xmodal.core.errors import ConfigError
from xmodal.trainers.lifecycle.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint, resolve_resume


def test_atomic_write_replaces_whole_files_and_leaves_no_staging(tmp_path):
    path = tmp_path / "config.yaml"
    atomic_write_text(str(path), "a: 1\n")
    atomic_write_text(str(path), "a: 2\n")
    assert path.read_text() == "a: 2\n"
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_a_failed_directory_write_keeps_the_previous_one(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(str(target)) as staging:
            Path(staging, "weights").write_text("partial")
            raise RuntimeError("crash mid-save")
    assert os.listdir(tmp_path) == []  # a first write that fails leaves nothing a reader could take for a model
    with atomic_directory(str(target)) as staging:
        Path(staging, "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(str(target)) as staging:
            Path(staging, "weights").write_text("partial")
            Path(staging, "config").write_text("partial")
            raise RuntimeError("crash mid-save")
    assert os.listdir(target) == ["weights"] and (target / "weights").read_text() == "v1"
    assert os.listdir(tmp_path) == ["model"]


def _directory(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _contents(path) -> dict[str, str]:
    return {name: Path(path, name).read_text() for name in sorted(os.listdir(path))}


def test_publish_replaces_an_older_directory_only_when_complete(tmp_path):
    final = _directory(tmp_path / "final", {"old": "old"})
    publish_directory(str(_directory(tmp_path / "staging", {"new": "new"})), str(final))
    assert _contents(final) == {"new": "new"} and sorted(os.listdir(tmp_path)) == ["final"]


def _killed(*args, **kwargs):
    raise KeyboardInterrupt("killed")


def _crash_on_rename(monkeypatch, call: int):
    """Make the `call`-th os.replace (1-based) raise, as a process killed at that point would stop there."""
    real_replace, calls = os.replace, []

    def replace(source, target):
        calls.append((source, target))
        if len(calls) == call:
            _killed()
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)


def test_a_publish_killed_between_its_renames_leaves_a_complete_directory_to_read(tmp_path, monkeypatch):
    final = _directory(tmp_path / "final", {"weights": "old", "config": "old"})
    with monkeypatch.context() as patch:
        _crash_on_rename(patch, call=2)  # the old final/ moved aside, the new one not yet in
        with pytest.raises(KeyboardInterrupt):
            publish_directory(str(_directory(tmp_path / "staging", {"weights": "new"})), str(final))
    assert _contents(published_directory(str(final))) == {"config": "old", "weights": "old"}
    # The next publish finds the interrupted one, finishes it, and replaces the old directory as usual.
    publish_directory(str(_directory(tmp_path / "staging2", {"weights": "newer"})), str(final))
    assert _contents(published_directory(str(final))) == {"weights": "newer"}
    assert sorted(os.listdir(tmp_path)) == ["final", "staging"]


def test_a_publish_killed_after_its_renames_serves_the_new_directory(tmp_path, monkeypatch):
    final = _directory(tmp_path / "final", {"weights": "old"})
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", _killed)  # both renames done, the old copy not yet deleted
        with pytest.raises(KeyboardInterrupt):
            publish_directory(str(_directory(tmp_path / "staging", {"weights": "new"})), str(final))
    assert _contents(published_directory(str(final))) == {"weights": "new"}
    publish_directory(str(_directory(tmp_path / "staging2", {"weights": "newer"})), str(final))
    assert _contents(final) == {"weights": "newer"} and sorted(os.listdir(tmp_path)) == ["final"]


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
