"""xmodal-list: every config group's options and the components (`_target_`s) each one builds.

Every swappable component - sources (`data`), builders, loss terms, metric callbacks, RL rewards, tiny-model
builders - is named in its YAML by `_target_` and instantiated from there, so the shipped configs are the
registry: `xmodal-list` prints them; `xmodal-list loss` prints one group.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from xmodal.core.errors import ConfigError
from xmodal.recipes import CONFIG_DIR
from xmodal.core.console import console_script


def targets(node) -> list[str]:
    """Every `_target_` in a config node, depth first."""
    if OmegaConf.is_dict(node):
        found = [str(node["_target_"])] if "_target_" in node else []
        return found + [t for key, value in node.items_ex(resolve=False) if key != "_target_" for t in targets(value)]
    if OmegaConf.is_list(node):
        return [t for value in node for t in targets(value)]
    return []


def summary(path: Path) -> str:
    """The first comment line of a config file: what the option is for."""
    for line in path.read_text().splitlines():
        if line.startswith("# @package"):
            continue
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        break
    return ""


def group_listing(group: Path) -> list[str]:
    lines = [f"{group.relative_to(CONFIG_DIR)}/"]
    for path in sorted(group.rglob("*.yaml")):
        option = path.relative_to(group).with_suffix("").as_posix()
        lines.append(f"  {option:<28} {summary(path)}")
        lines += [f"  {'':<28}   -> {target}" for target in dict.fromkeys(targets(OmegaConf.load(path)))]
    return lines


@console_script("xmodal-list")
def main(argv: list[str] | None = None) -> None:
    wanted = (sys.argv[1:] if argv is None else argv) or None
    groups = sorted(p for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and not p.name.startswith("__"))
    unknown = sorted(set(wanted or []) - {g.name for g in groups})
    if unknown:
        raise ConfigError(f"no config group {', '.join(unknown)}; groups: {', '.join(g.name for g in groups)}")
    for group in groups:
        if wanted is None or group.name in wanted:
            print("\n".join(group_listing(group)))


if __name__ == "__main__":
    main()
