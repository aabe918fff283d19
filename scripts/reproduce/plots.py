"""The plots, from results.json and the archived runs' metrics.jsonl: held-out numbers by condition per recipe,
the headline gap per recipe, and the in-training curves per recipe."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from xmodal.core.atomic import atomic_file

from .papers import MODAL_IMBALANCE, PAPERS, Paper
from .statistics import read_lines


def plot_all(results: dict, archive_root: Path, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    paths = []
    for paper in PAPERS:
        recipes = results["papers"][paper.key]["recipes"]
        measured = "discrimination (recognition - false alarms)" if paper is MODAL_IMBALANCE else "accuracy"
        paths.append(_bars(recipes, list(paper.conditions), out / f"{paper.key}_by_condition.png",
                           f"{paper.title}\nheld-out {measured} by condition"))
        paths.append(_bars(recipes, [paper.gap], out / f"{paper.key}_gap.png",
                           f"{paper.title}\n{paper.gap.replace('_', ' ')} on held-out records"))
        paths.append(_curves(paper, archive_root, out / f"{paper.key}_training.png"))
    return paths


def _bars(recipes: dict, metrics: list[str], path: Path, title: str) -> Path:
    """Grouped bars (mean over seeds) with 95 % interval whiskers and one dot per seed."""
    import matplotlib.pyplot as plt

    names = list(recipes)
    width = 0.8 / len(metrics)
    figure, axis = plt.subplots(figsize=(max(6, 1.4 * len(names) * max(1, len(metrics) / 2)), 4.2))
    for index, metric in enumerate(metrics):
        xs = [n + (index - (len(metrics) - 1) / 2) * width for n in range(len(names))]
        summaries = [recipes[name]["summary"].get(metric) for name in names]
        means = [s["mean"] if s else math.nan for s in summaries]
        errors = [[s["mean"] - s["ci95"][0] if s and s["ci95"] else 0 for s in summaries],
                  [s["ci95"][1] - s["mean"] if s and s["ci95"] else 0 for s in summaries]]
        axis.bar(xs, means, width, yerr=errors, capsize=3, label=metric.split("/")[-1])
        for x, name in zip(xs, names):
            seeds = [m[metric] for m in recipes[name]["seeds"].values() if metric in m]
            axis.scatter([x] * len(seeds), seeds, color="black", s=8, zorder=3)
    axis.axhline(0, color="grey", linewidth=0.8)
    if len(metrics) > 1:  # rates: the whole [0, 1] range (and below 0 where a difference is), at a glance
        axis.set_ylim(min(0, axis.get_ylim()[0]), 1.05)
    axis.set_xticks(range(len(names)), names)
    axis.set_title(title, fontsize=10)
    axis.set_ylabel("mean over seeds (95 % hierarchical interval; dots: seeds)")
    if len(metrics) > 1:
        axis.legend(fontsize=8, ncols=min(len(metrics), 5), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    figure.tight_layout()
    return _save(figure, path)


def _curves(paper: Paper, archive_root: Path, path: Path) -> Path:
    """Per recipe, the in-training held-out evaluation, imbalance probe and LM loss over steps (mean over seeds).
    A recipe that starts from another's model is drawn from the step of that model it started from."""
    import matplotlib.pyplot as plt

    rows = {(recipe.name, folder.name): read_lines(folder / "metrics.jsonl.gz")
            for recipe in paper.recipes for folder in sorted((archive_root / paper.key / recipe.name).glob("seed*"))
            if (folder / "metrics.jsonl.gz").is_file()}
    by_name = {recipe.name: recipe for recipe in paper.recipes}

    def first_step(recipe: str, seed: str) -> int:
        """0, or for a run that fine-tunes another recipe's model, the step of that model it started from: the
        pre-registered one (start.json), else that run's last."""
        parent = by_name[recipe].starts_from
        if parent is None or (parent, seed) not in rows:
            return 0
        start = archive_root / paper.key / recipe / seed / "start.json"
        step = json.loads(start.read_text())["step"] if start.is_file() else \
            max((row["step"] for row in rows[(parent, seed)]), default=0)
        return first_step(parent, seed) + step

    figure, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    axes = axes.flatten()
    for axis, (key, label) in zip(axes, paper.curves):
        for recipe in paper.recipes:
            curves = [_series(lines, key, first_step(name, seed)) for (name, seed), lines in rows.items()
                      if name == recipe.name]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if steps:
                axis.plot(steps, [statistics.fmean(c[s] for c in curves) for s in steps], marker=".", label=recipe.name)
        axis.set_xlabel("training step")
        axis.set_ylabel(label)
        if key == "lm_loss" and axis.lines:
            axis.set_yscale("log")  # the late plateau is what tells recipes apart
        axis.set_title(f"{label} (mean over seeds)", fontsize=10)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    figure.suptitle(paper.title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def _series(rows: list[dict], key: str | tuple[str, str], first_step: int = 0) -> dict[int, float]:
    if isinstance(key, tuple):  # the difference of two keys, at the steps that log both
        minuend, subtrahend = (_series(rows, k, first_step) for k in key)
        return {step: minuend[step] - subtrahend[step] for step in minuend if step in subtrahend}
    return {first_step + row["step"]: row[key] for row in rows if key in row}


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
    return path
