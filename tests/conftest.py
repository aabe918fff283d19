"""Fixtures shared by every test directory."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One cache for the session, so tiny models and rendered images are built once."""
    path = str(tmp_path_factory.mktemp("xmodal-cache"))
    os.environ["XMODAL_CACHE"] = path
    return path


@pytest.fixture(autouse=True)
def _restore_environment():
    """Entry points run in-process export their logger's variables; no test leaks them into the next one."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
