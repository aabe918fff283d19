"""Crash-safe writes: a reader never sees a half-written file, directory or metrics line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_file(path, mode: str = "w", **open_kwargs):
    """Yield a handle on a staging file that replaces `path` only once the block finishes without error."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(staging)
        raise


def atomic_write_text(path, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text)


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yield a staging directory that replaces `path` only once the block finishes without error."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.")
    try:
        yield staging
        if os.path.isdir(path):  # another process finished first; its copy is as good as ours
            shutil.rmtree(staging)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def append_jsonl(path: str, record: dict) -> None:
    """Append one JSON line with a single write, flushed to disk, so a crash can only lose the line in flight."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _previous_copy(path: str) -> str:
    """Where `publish_directory` keeps the older `path` while the new one moves in (a fixed name, found after a crash)."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.previous")


def publish_directory(staging: str, path: str) -> None:
    """Move a fully written `staging` directory to `path`, replacing an older `path` only after it is complete.

    Two renames cannot replace a non-empty directory atomically: the older `path` first moves to a fixed
    side name. A crash between the renames leaves no `path` but a complete previous copy, which
    `published_directory` reads and the next publish puts back before starting.
    """
    previous = _previous_copy(path)
    _finish_interrupted_publish(path, previous)
    if os.path.isdir(path):
        os.replace(path, previous)
    os.replace(staging, path)
    shutil.rmtree(previous, ignore_errors=True)


def _finish_interrupted_publish(path: str, previous: str) -> None:
    if not os.path.isdir(previous):
        return
    if os.path.isdir(path):  # the crash came after the new directory was in place: the old one is only garbage
        shutil.rmtree(previous)
    else:
        os.replace(previous, path)


def published_directory(path: str) -> str:
    """`path`, or its complete previous copy when a publish crashed between its two renames (read-only: never moves)."""
    previous = _previous_copy(path)
    if not os.path.isdir(path) and os.path.isdir(previous):
        return previous
    return path
