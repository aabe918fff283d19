"""Library code takes what it uses, not the root config: no function below recipes/ receives the composed config.

A function below `recipes/` (core, data_builders, losses, trainers) fails the check when one of its parameters
- is named like the root config (`cfg`, `config`, `root`, ...), or
- is read for two or more distinct root-level keys of the shipped root configs (`x.trainer` and `x.output_dir`,
  `x["model"]`, `x.get("seed")`, `OmegaConf.select(x, "trainer.max_steps")`), unless it is `self`/`cls` or
  annotated with a type of its own (a settings dataclass with a `seed` and a `cache_dir` is not the root config).
The recipes pass the sub-nodes and values each function needs; the run directory is returned, never written back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LIBRARY_LAYERS = ("core", "data_builders", "losses", "trainers")  # everything below recipes/
ROOT_CONFIG_NAMES = {"cfg", "config", "root_cfg", "root_config", "conf"}  # `root` alone names data directories
CONFIG_TYPES = {None, "DictConfig", "Mapping", "dict", "Any", "Container"}  # annotations a root config could wear
ROOT_CONFIG_FILES = ("config.yaml", "rl.yaml", "evaluate.yaml", "imbalance.yaml")


def root_keys(conf_dir: Path) -> set[str]:
    """Top-level keys of the root configs: their own keys and the groups their defaults lists compose at the root."""
    keys = set()
    for name in ROOT_CONFIG_FILES:
        path = conf_dir / name
        if not path.is_file():
            continue
        document = yaml.safe_load(path.read_text()) or {}
        keys |= {key for key in document if key not in ("defaults", "hydra")}
        for entry in document.get("defaults", []):
            if isinstance(entry, dict):
                group = next(iter(entry)).removeprefix("override ").strip()
                if "@" not in group and "/" not in group:
                    keys.add(group)
    return keys


def _read_keys(function: ast.AST, parameter: str, keys: set[str]) -> set[str]:
    """The root-level keys read from `parameter` inside `function`."""
    found = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == parameter:
            found.add(node.attr)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == parameter:
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                found.add(node.slice.value)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name):
            # OmegaConf.select(x, "trainer.max_steps")
            if node.args[0].id == parameter and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                if isinstance(node.args[1].value, str):
                    found.add(node.args[1].value.split(".")[0])
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == parameter
            and node.func.attr in ("get", "pop", "select")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found & keys


def _annotation(parameter: ast.arg) -> str | None:
    """The annotation's leading type name (`DictConfig | None` -> DictConfig), or None without one."""
    annotation = parameter.annotation
    if annotation is None:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # a string annotation
        annotation = ast.parse(annotation.value, mode="eval").body
    while isinstance(annotation, (ast.BinOp, ast.Subscript)):
        annotation = annotation.left if isinstance(annotation, ast.BinOp) else annotation.value
    return annotation.id if isinstance(annotation, ast.Name) else getattr(annotation, "attr", None)


def root_config_parameters(root: Path) -> list[str]:
    """`file:line function(parameter)` for every library function that takes the root config, with the reason."""
    keys = root_keys(root / "conf")
    found = []
    for layer in LIBRARY_LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    continue
                arguments = node.args
                parameters = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
                parameters += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
                name = getattr(node, "name", "<lambda>")
                for parameter in parameters:
                    where = f"{path.relative_to(root)}:{node.lineno} {name}({parameter.arg})"
                    if parameter.arg in ROOT_CONFIG_NAMES:
                        found.append(f"{where}: named like the root config")
                        continue
                    if parameter.arg in ("self", "cls") or _annotation(parameter) not in CONFIG_TYPES:
                        continue
                    read = _read_keys(node, parameter.arg, keys)
                    if len(read) >= 2:
                        found.append(f"{where}: reads root keys {sorted(read)}")
    return found


def test_no_library_function_takes_the_root_config():
    assert root_config_parameters(REPO) == []


def test_the_root_keys_come_from_the_shipped_root_configs():
    keys = root_keys(REPO / "conf")
    assert {"model", "data", "builder", "trainer", "deepspeed", "output_dir", "seed", "cache_dir", "rl", "reward"} <= keys
    assert "defaults" not in keys and "hydra" not in keys


def _tree(root: Path, source: str) -> None:
    (root / "conf").mkdir()
    (root / "conf" / "config.yaml").write_text(
        "defaults:\n  - _self_\n  - model: tiny\n  - trainer: default\n  - /render@render: small\n"
        "output_dir: outputs\nseed: 42\nhydra:\n  run:\n    dir: .\n"
    )
    for layer in (*LIBRARY_LAYERS, "recipes"):
        (root / layer).mkdir()
    (root / "trainers" / "fine.py").write_text(
        "def load(model_cfg, output_dir: str, seed: int):\n    return model_cfg.path, model_cfg.dtype, output_dir, seed\n"
        "def hparams(args):\n    return args.seed\n"
        "def stage(settings: StageSettings, root: str):\n    return settings.seed, settings.cache_dir, root\n"
        "class Source:\n    def records(self):\n        return self.seed, self.cache_dir\n"
    )
    (root / "recipes" / "finetune.py").write_text("def train(cfg):\n    return cfg.model, cfg.output_dir\n")
    (root / "data_builders" / "bad.py").write_text(source)


@pytest.mark.parametrize(
    "source, reason",
    [
        ("def build(cfg):\n    return cfg.data\n", "build(cfg): named like the root config"),
        ("def run(settings: DictConfig):\n    return settings.trainer.max_steps, settings.output_dir\n",
         "run(settings): reads root keys ['output_dir', 'trainer']"),
        ("def run(node):\n    return node['model'], node.get('seed')\n", "run(node): reads root keys ['model', 'seed']"),
        ("from omegaconf import OmegaConf\ndef run(node):\n    return OmegaConf.select(node, 'trainer.max_steps'), node.seed\n",
         "run(node): reads root keys ['seed', 'trainer']"),
        ("class Claim:\n    def claim(self, config):\n        config.output_dir = 'x'\n", "claim(config): named like the root config"),
    ],
)
def test_a_library_function_taking_the_root_config_is_reported(tmp_path, source, reason):
    _tree(tmp_path, source)
    found = root_config_parameters(tmp_path)
    assert len(found) == 1 and found[0].startswith("data_builders/bad.py:") and found[0].endswith(reason), found
