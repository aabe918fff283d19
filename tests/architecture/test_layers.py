"""The layers import only downward: core <- data_builders <- losses <- trainers <- recipes <- scripts, and no recipe
imports another.

Every import counts: statements inside functions (a lazy upward import is still a cycle in waiting) and module
paths written as strings (`importlib.import_module("xmodal.recipes.finetune")`, a `_target_` built in code).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("core", "data_builders", "losses", "trainers", "recipes", "scripts")  # lowest first
NAMESPACE = "xmodal"
_MODULE_STRING = re.compile(rf"^{NAMESPACE}\.({'|'.join(LAYERS)})(\.\w+)*(:\w+)?$")


def _package_of(path: Path, root: Path) -> str:
    """The dotted package a file belongs to once installed (`recipes/finetune.py` -> `xmodal.recipes`)."""
    return ".".join((NAMESPACE, *path.relative_to(root).parts[:-1]))


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file and of every string naming an xmodal module."""
    package = _package_of(path, root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, module)] if node.module or node.level else []
            if not node.module:  # `from . import x`: each name is a module of the package
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            found.append((node.lineno, node.value.split(":")[0]))
    return found


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == NAMESPACE and parts[1] in LAYERS else None


def layer_violations(root: Path) -> list[str]:
    """Every upward import (and every recipe importing another recipe module) under `root`, as readable lines."""
    violations = []
    for rank, layer in enumerate(LAYERS):
        for path in sorted((root / layer).rglob("*.py")):
            for line, module in imported_modules(path, root):
                where = f"{path.relative_to(root)}:{line} imports {module}"
                if module.split(".")[0] in LAYERS:
                    violations.append(f"{where} (outside the {NAMESPACE} namespace: it is not installed)")
                    continue
                top = _layer_of(module)
                if top is not None and LAYERS.index(top) > rank:
                    violations.append(f"{where} (layer {top} is above {layer})")
                elif layer == "recipes" and top == "recipes" and module != f"{NAMESPACE}.recipes" and path.name != "__init__.py":
                    violations.append(f"{where} (entry points share code through the lower layers, not each other)")
    return violations


def test_the_package_and_scripts_import_only_downward():
    assert layer_violations(REPO) == []


def _tree(root: Path) -> None:
    for name in LAYERS:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")


@pytest.mark.parametrize(
    "layer, source",
    [
        ("core", "from xmodal.data_builders.sample import make_sample\n"),
        ("data_builders", "from xmodal.trainers.lifecycle.callbacks import MetricsFileCallback\n"),
        ("losses", "def lazy():\n    import xmodal.recipes.finetune\n"),
        ("trainers", "from xmodal.recipes import CONFIG_DIR\n"),
        ("trainers", "import importlib\nSTAGE = importlib.import_module('xmodal.recipes.finetune')\n"),
        ("recipes", "RUNNER = 'xmodal.scripts.reproduce.runner:main'\n"),
        ("data_builders", "from trainers.sft import XModalSFTTrainer\n"),
    ],
)
def test_an_upward_or_unnamespaced_import_is_reported(tmp_path, layer, source):
    _tree(tmp_path)
    (tmp_path / layer / "bad.py").write_text(source)
    (tmp_path / "data_builders" / "fine.py").write_text("from .sample import make_sample\nimport torch\n")
    (tmp_path / "scripts" / "fine.py").write_text("TARGET = 'xmodal.recipes.finetune'\nfrom xmodal.recipes import CONFIG_DIR\n")
    assert [v.split(" imports ")[0] for v in layer_violations(tmp_path)] == [f"{layer}/bad.py:{source.count(chr(10))}"]


def test_a_recipe_importing_another_recipe_is_reported(tmp_path):
    _tree(tmp_path)
    (tmp_path / "recipes" / "evaluate.py").write_text("from xmodal.recipes import CONFIG_DIR\nfrom xmodal.recipes.finetune import x\n")
    assert layer_violations(tmp_path) == [
        "recipes/evaluate.py:2 imports xmodal.recipes.finetune (entry points share code through the lower layers, not each other)"
    ]


def test_xmodal_list_names_every_group_and_every_target_imports(capsys):
    from hydra.utils import get_object

    from xmodal.recipes import CONFIG_DIR
    from xmodal.recipes.list import main

    main([])
    listing = capsys.readouterr().out
    groups = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and not p.name.startswith("__"))
    assert [line[:-1] for line in listing.splitlines() if not line.startswith(" ")] == groups
    listed = [line.split("-> ")[1] for line in listing.splitlines() if "-> " in line]
    assert "xmodal.trainers.metrics.imbalance_callback.ImbalanceCallback" in listed and "xmodal.losses.lm.LMLoss" in listed
    for target in listed:
        assert callable(get_object(target)), target
