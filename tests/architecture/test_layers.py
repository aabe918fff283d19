"""The layers import only downward: data_builders <- losses <- trainers <- recipes, and no recipe imports another.

Every import statement counts, including those inside functions (a lazy upward import is still a cycle in waiting).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("data_builders", "losses", "trainers", "recipes")  # lowest first


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file; relative imports resolved against its package."""
    package = ".".join(path.relative_to(root).parts[:-1])
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
    return found


def layer_violations(root: Path) -> list[str]:
    """Every upward import (and every recipe importing another recipe module) under `root`, as readable lines."""
    violations = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            rank = LAYERS.index(layer)
            for line, module in imported_modules(path, root):
                top = module.split(".")[0]
                where = f"{path.relative_to(root)}:{line} imports {module}"
                if top in LAYERS and LAYERS.index(top) > rank:
                    violations.append(f"{where} (layer {top} is above {layer})")
                elif layer == "recipes" and top == "recipes" and module != "recipes" and path.name != "__init__.py":
                    violations.append(f"{where} (entry points share code through the lower layers, not each other)")
    return violations


def test_the_package_imports_only_downward():
    assert layer_violations(REPO) == []


@pytest.mark.parametrize(
    "layer, source",
    [
        ("data_builders", "from trainers.callbacks import MetricsFileCallback\n"),
        ("losses", "def lazy():\n    import recipes.finetune\n"),
        ("trainers", "from recipes import CONFIG_DIR\n"),
    ],
)
def test_an_upward_import_is_reported(tmp_path, layer, source):
    for name in LAYERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / layer / "bad.py").write_text(source)
    (tmp_path / "data_builders" / "fine.py").write_text("from .errors import DataError\nimport torch\n")
    assert [v.split(" imports ")[0] for v in layer_violations(tmp_path)] == [f"{layer}/bad.py:{source.count(chr(10))}"]


def test_a_recipe_importing_another_recipe_is_reported(tmp_path):
    for name in LAYERS:
        (tmp_path / name).mkdir()
    (tmp_path / "recipes" / "evaluate.py").write_text("from recipes import CONFIG_DIR\nfrom recipes.finetune import x\n")
    assert layer_violations(tmp_path) == [
        "recipes/evaluate.py:2 imports recipes.finetune (entry points share code through the lower layers, not each other)"
    ]


def test_xmodal_list_names_every_group_and_every_target_imports(capsys):
    from hydra.utils import get_object

    from recipes import CONFIG_DIR
    from recipes.list import main

    main([])
    listing = capsys.readouterr().out
    groups = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and not p.name.startswith("__"))
    assert [line[:-1] for line in listing.splitlines() if not line.startswith(" ")] == groups
    listed = [line.split("-> ")[1] for line in listing.splitlines() if "-> " in line]
    assert "trainers.metrics.imbalance_callback.ImbalanceCallback" in listed and "losses.lm.LMLoss" in listed
    for target in listed:
        assert callable(get_object(target)), target
