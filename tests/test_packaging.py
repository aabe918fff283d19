"""The distribution installs one top-level name, `xmodal`, holding every package and config of the repository."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def _option_lines(name: str) -> list[str]:
    return [line.strip() for line in _setup_cfg()["options"][name].splitlines() if line.strip()]


def test_every_package_folder_is_listed_under_the_namespace():
    mapping = dict(line.split(" = ") for line in _option_lines("package_dir"))
    on_disk = {
        ".".join((namespaced, *folder.relative_to(REPO / top).parts))
        for namespaced, top in mapping.items()
        for folder in [REPO / top, *(REPO / top).rglob("*")]
        if (folder / "__init__.py").is_file() and "__pycache__" not in folder.parts
    }
    assert sorted(_option_lines("packages")) == sorted(on_disk)
    assert {name.split(".")[0] for name in mapping} == {"xmodal"}


@pytest.mark.slow
def test_installs_beside_packages_named_recipes_and_conf(tmp_path):
    """torchtune installs `recipes`, PyPI has `conf`: with xmodal's wheel unpacked beside them, all import."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    site = tmp_path / "site"
    (wheel,) = tmp_path.glob("xmodal-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}
        assert tops == {"xmodal"}
        assert "xmodal/conf/config.yaml" in archive.namelist() and "xmodal/conf/model/tiny_llava_base.yaml" in archive.namelist()
        archive.extractall(site)
    for other in ("recipes", "conf"):  # what another distribution would install at the top level
        (site / other).mkdir()
        (site / other / "__init__.py").write_text(f"OWNER = 'another distribution\\'s {other}'\n")
    probe = (
        "import recipes, conf, xmodal.recipes, os; "
        "assert recipes.OWNER.endswith('recipes') and conf.OWNER.endswith('conf'); "
        "print(os.path.isfile(os.path.join(xmodal.recipes.CONFIG_DIR, 'config.yaml')))"
    )
    # -S: nothing but the unpacked site on the path (not this checkout, not the test environment's xmodal)
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
