"""Mutation testing of the modules that decide the science with mutmut (docs/testing.md); not part of CI.

    python scripts/mutation_testing.py [--tree DIR] [MUTANT GLOB ...]     e.g. "xmodal.core.scoring*"

mutmut names a mutant after the module path of its file, and checks that the tests import that module under the
same name. This repository installs its folders as `xmodal.<folder>` (setup.cfg's package_dir), so the script
copies them into a scratch tree as `xmodal/<folder>/`, beside `tests/` and `setup.cfg` (its [mutmut] section holds
the modules and the targeted fast tests), and runs `mutmut run --max-children 1` there: one mutant at a time, on a
shared machine. The tree is kept between calls, so mutmut resumes where it stopped; `mutmut results` in the tree
lists the survivors and `mutmut show NAME` shows one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "data_builders", "losses", "trainers", "recipes", "conf")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def lay_out_tree(tree: Path) -> None:
    """The packages under xmodal/, the tests and setup.cfg, refreshed from the checkout (mutmut re-mutates what changed)."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tree / "xmodal" / package, ignore=IGNORED, dirs_exist_ok=True)
    shutil.copytree(REPO / "tests", tree / "tests", ignore=IGNORED, dirs_exist_ok=True)
    shutil.copy2(REPO / "setup.cfg", tree / "setup.cfg")
    mutated = tree / "mutants" / "xmodal"
    if mutated.is_dir():  # mutmut re-copies changed .py files only: refresh the configs beside them
        for path in (tree / "xmodal").rglob("*"):
            if path.is_file() and path.suffix not in (".py", ".pyc"):
                (mutated / path.relative_to(tree / "xmodal")).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, mutated / path.relative_to(tree / "xmodal"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=REPO / "mutants-tree", help="scratch tree (default: %(default)s)")
    parser.add_argument("mutants", nargs="*", help="mutant name globs (default: every module in setup.cfg [mutmut])")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("XMODAL_PGPS9K_SAMPLE", str(REPO.parent / "shared" / "data" / "pgps9k_sample"))
    if not Path(env["XMODAL_PGPS9K_SAMPLE"]).is_dir():
        # the tests that read the sample would be skipped, and a skipped test kills no mutant: false survivors
        sys.exit(f"no PGPS9K sample at XMODAL_PGPS9K_SAMPLE={env['XMODAL_PGPS9K_SAMPLE']}: set it to the sample's folder")
    lay_out_tree(args.tree)
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", *args.mutants]
    return subprocess.run(command, cwd=args.tree, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
