"""Shared fixtures: generated images go to a per-session temporary cache; the real PGPS9K sample is located."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PGPS9K_SAMPLE = Path(os.environ.get("XMODAL_PGPS9K_SAMPLE", REPO.parent / "shared" / "data" / "pgps9k_sample"))


@pytest.fixture(autouse=True, scope="session")
def render_cache(tmp_path_factory):
    """Point $XMODAL_CACHE at a temporary directory for the whole session."""
    path = tmp_path_factory.mktemp("xmodal_cache")
    previous = os.environ.get("XMODAL_CACHE")
    os.environ["XMODAL_CACHE"] = str(path)
    yield path
    if previous is None:
        del os.environ["XMODAL_CACHE"]
    else:
        os.environ["XMODAL_CACHE"] = previous


@pytest.fixture
def pgps9k_root() -> Path:
    if not (PGPS9K_SAMPLE / "train.json").is_file():
        pytest.skip(f"PGPS9K sample not found at {PGPS9K_SAMPLE} (set XMODAL_PGPS9K_SAMPLE)")
    return PGPS9K_SAMPLE
