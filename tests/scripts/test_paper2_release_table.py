"""scripts/paper2_release_table.py: README's paper 2 table is the one the composed configs give, and a composed value
that leaves the release without a stated reason stops the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "paper2_release_table.py"


@pytest.fixture(scope="module")
def release_table():
    """scripts/ is no package: the script imported by path (registered first, as dataclasses need)."""
    spec = importlib.util.spec_from_file_location("paper2_release_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_the_composed_one(release_table):
    assert release_table.readme_table(release_table.README.read_text()) == release_table.table()
    assert release_table.main(["--check"]) == 0


@pytest.mark.parametrize("override,knob", [("rl.grpo.delta=null", "dual clip"), ("reward.correct.weight=1.0", "reward")])
def test_an_unexplained_difference_stops_the_table(release_table, override, knob):
    with pytest.raises(ValueError, match=f"knob '{knob}' differs from the release"):
        release_table.table_rows([override])
