"""Every number of both papers' tables, from the archived per-run files alone, with ONE interval: a hierarchical
bootstrap that resamples seeds, then within each drawn seed its held-out records (the records that share content
with a training record left out and counted).

A run's numbers are tallies per held-out record (answers, correct answers, "the sources disagree" verdicts per
condition), so that any rate and any difference of rates is a function of summed tallies, computed for all
resamples at once. Run-level numbers (attention imbalance, RL training, in-training curves) enter as a run's
single record: the bootstrap resamples their seeds only. A paired difference (two recipes, same seeds) sums both
recipes' tallies over the same resampled records of each seed.
"""

from __future__ import annotations

import gzip
import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .papers import CONFLICT_CONDITIONS, MODALITY_GAP, PAPERS, Paper

Tallies = Mapping[str, np.ndarray]  # column -> summed value, one entry per resample
Metric = Callable[[Tallies], np.ndarray]
RUN_RECORD = "<run>"  # the one record of a run's run-level numbers
COMPETENCE = 0.9  # unimodal competence (pre-registered): held-out control accuracy in both unimodal conditions


def rate(kind: str, condition: str) -> Metric:
    return lambda t: t[f"{kind}/{condition}"] / t[f"answers/{condition}"]


def _difference(first: Metric, second: Metric) -> Metric:
    return lambda t: first(t) - second(t)


def _unimodal_gap(per_condition: Callable[[str], Metric]) -> Metric:
    """Mean of the two unimodal conditions less the cross-modal one."""
    return lambda t: (per_condition("unimodal_text")(t) + per_condition("unimodal_image")(t)) / 2 - per_condition(
        "cross_modal")(t)


def _discrimination(condition: str) -> Metric:
    """Recognition less the false-alarm rate on the same condition's controls (saying "conflict" to everything
    recognises every conflict)."""
    return _difference(rate("said_conflict", condition), rate("said_conflict", f"{condition}_control"))


def _false_alarm(t: Tallies) -> np.ndarray:
    controls = [f"{c}_control" for c in CONFLICT_CONDITIONS]
    return sum(t[f"said_conflict/{c}"] for c in controls) / sum(t[f"answers/{c}"] for c in controls)


ITEM_METRICS: dict[str, dict[str, Metric]] = {
    MODALITY_GAP.key: {
        "text_centric": rate("correct", "text_centric"),
        "vision_centric": rate("correct", "vision_centric"),
        "modality_gap": _difference(rate("correct", "text_centric"), rate("correct", "vision_centric")),
        "modality_gap_size": lambda t: np.abs(rate("correct", "text_centric")(t) - rate("correct", "vision_centric")(t)),
    },
    "modal_imbalance": {
        **{f"recognition/{c}": rate("said_conflict", c) for c in CONFLICT_CONDITIONS},
        **{f"control_accuracy/{c}": rate("correct", f"{c}_control") for c in CONFLICT_CONDITIONS},
        **{f"discrimination/{c}": _discrimination(c) for c in CONFLICT_CONDITIONS},
        "false_alarm": _false_alarm,
        "recognition_gap": _unimodal_gap(lambda c: rate("said_conflict", c)),
        "discrimination_gap": _unimodal_gap(_discrimination),
        **{f"proxy/{kind}": rate("correct", f"cross_modal_qa_{kind}") for kind in ("image", "text", "both")},
        "proxy/accuracy": lambda t: sum(rate("correct", f"cross_modal_qa_{kind}")(t)
                                        for kind in ("image", "text", "both")) / 3,
    },
}


# --- one run's tallies ----------------------------------------------------------------------------------------------


def read_lines(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def record_tallies(predictions: list[dict], excluded: set[str]) -> dict[str, dict[str, float]]:
    """record -> {"answers/<c>", "correct/<c>", "said_conflict/<c>": counts} over the items of the records not
    `excluded` (each sampled answer counts once)."""
    tallies: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for item in predictions:
        if item["record"] in excluded:
            continue
        counts, condition = tallies[item["record"]], item["condition"]
        counts[f"answers/{condition}"] += len(item["correct"])
        counts[f"correct/{condition}"] += sum(item["correct"])
        counts[f"said_conflict/{condition}"] += sum(item.get("said_conflict") or ())
    return {record: dict(counts) for record, counts in tallies.items()}


def imbalance_metrics(archived: Path) -> dict[str, float]:
    """The image (or first) span's share of attention per condition: per token and as raw mass (weight mode), and
    of the span contributions' norms (norm mode)."""
    metrics = {}
    for name, quantities in (("imbalance.json", {"per_token": "per_token_ratio", "mass": "ratio"}),
                             ("imbalance_norm.json", {"norm": "ratio"})):
        if (archived / name).is_file():
            for condition, result in json.loads((archived / name).read_text())["results"]["checkpoint"].items():
                for label, quantity in quantities.items():
                    share = result["aggregate"][quantity]
                    metrics[f"imbalance/{label}/{condition}"] = share
                    # how far from balanced, whichever span gets more: what "less imbalance" compares
                    metrics[f"imbalance_distance/{label}/{condition}"] = abs(share - 0.5)
    return metrics


def training_metrics(rows: list[dict]) -> dict[str, float]:
    """What training did, from metrics.jsonl: the RL run's mean reward over its last fifth and its alignment term's
    token mean and coverage; the in-training held-out curves' change from first to last evaluation; and whether the
    last evaluation meets the unimodal competence criterion."""
    metrics = {}
    rewards = [row["reward"] for row in rows if "reward" in row]
    if rewards:
        metrics["rl/reward_last_fifth"] = statistics.fmean(rewards[-max(1, len(rewards) // 5):])
    for key in ("align_loss", "aligned_rollouts", "align_inside_clamp"):
        values = [row[key] for row in rows if row.get(key) is not None]
        if values:
            metrics[f"rl/{key}"] = statistics.fmean(values)
    for key in ("eval/accuracy/text_centric", "eval/accuracy/vision_centric", "eval/modality_gap"):
        curve = [row[key] for row in rows if key in row]
        if len(curve) >= 2:
            metrics[f"curve_change/{key.split('/')[-1]}"] = curve[-1] - curve[0]
    last = {}
    for row in rows:
        last.update({key: value for key, value in row.items() if key.startswith("eval/control_accuracy/")})
    competence = [last.get(f"eval/control_accuracy/{c}") for c in ("unimodal_text", "unimodal_image")]
    if None not in competence:
        metrics["competent"] = float(min(competence) >= COMPETENCE)
    return metrics


def load_run(archived: Path) -> dict:
    """{"records": tallies per held-out record, "run": run-level numbers, "overlap": {held_out_records,
    overlapping_records}} of one archived run."""
    overlap_file = archived / "overlap.json"
    overlap = json.loads(overlap_file.read_text()) if overlap_file.is_file() else {"held_out_records": None,
                                                                                   "overlapping_records": []}
    predictions = [line for name in ("predictions.jsonl.gz", "proxy_predictions.jsonl.gz")
                   if (archived / name).is_file() for line in read_lines(archived / name)]
    records = record_tallies(predictions, set(overlap["overlapping_records"]))
    run = imbalance_metrics(archived)
    if (archived / "metrics.jsonl.gz").is_file():
        run.update(training_metrics(read_lines(archived / "metrics.jsonl.gz")))
    if (archived / "start.json").is_file():  # an RL run's pre-registered start
        start = json.loads((archived / "start.json").read_text())
        run.update({"rl/start_step": start["step"], "rl/start_vision_accuracy": start["vision_centric_accuracy"]})
    return {"records": records, "run": run,
            "overlap": {"held_out_records": overlap["held_out_records"],
                        "overlapping_records": len(overlap["overlapping_records"])}}


# --- the hierarchical bootstrap -------------------------------------------------------------------------------------


def hierarchical_bootstrap(seeds: Mapping[str, Mapping[str, Mapping[str, float]]], metric: Metric,
                           resamples: int = 2000, confidence: float = 0.95, rng_seed: int = 0) -> dict | None:
    """`seeds`: seed -> record -> tallies. The estimate is the mean over seeds of the metric on each seed's summed
    tallies; the interval is the percentile interval of the same mean over `resamples` draws of seeds with
    replacement and, within each drawn seed, of its records with replacement. None without a record; no interval
    with fewer than two seeds (the seed-to-seed spread is then unknown)."""
    names = sorted(seeds)
    tables = []
    for name in names:
        records = list(seeds[name].values())
        if not records:
            return None
        columns = sorted({column for record in records for column in record})
        matrix = np.array([[record.get(column, 0.0) for column in columns] for record in records])
        tables.append((columns, matrix))
    if not tables:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        per_seed = [float(metric({c: total for c, total in zip(columns, matrix.sum(0))})) for columns, matrix in tables]
        summary = {"mean": statistics.fmean(per_seed), "ci95": None, "n": len(per_seed),
                   "positive": sum(value > 0 for value in per_seed), "per_seed": dict(zip(names, per_seed)),
                   "records": [len(matrix) for _, matrix in tables]}
        if len(tables) < 2:
            return summary
        rng = np.random.default_rng(rng_seed)
        picks = rng.integers(0, len(tables), size=(resamples, len(tables)))  # seeds drawn, per resample
        resampled = np.empty((len(tables), resamples, len(tables)))  # a seed's value wherever it could be drawn
        for index, (columns, matrix) in enumerate(tables):
            weights = rng.multinomial(len(matrix), np.full(len(matrix), 1 / len(matrix)), size=(resamples, len(tables)))
            totals = weights @ matrix  # resample x draw x column
            resampled[index] = metric({c: totals[..., k] for k, c in enumerate(columns)})
        means = resampled[picks, np.arange(resamples)[:, None], np.arange(len(tables))[None, :]].mean(axis=1)
    tail = (1 - confidence) / 2
    summary["ci95"] = [float(np.nanquantile(means, tail)), float(np.nanquantile(means, 1 - tail))]
    return summary


def paired_seeds(first: Mapping[str, dict], second: Mapping[str, dict]) -> dict:
    """seed -> record -> tallies of both runs of each shared seed, on the records both hold; columns `a:`/`b:`."""
    return {seed: {record: {**{f"a:{k}": v for k, v in first[seed][record].items()},
                            **{f"b:{k}": v for k, v in second[seed][record].items()}}
                   for record in sorted(set(first[seed]) & set(second[seed]))}
            for seed in sorted(set(first) & set(second))}


def side(metric: Metric, prefix: str) -> Metric:
    return lambda t: metric({key[2:]: value for key, value in t.items() if key.startswith(prefix)})


def metric_of(paper: Paper, name: str) -> tuple[str, Metric]:
    """(level, metric): item metrics read the records' tallies, any other name a run-level number."""
    if name in ITEM_METRICS[paper.key]:
        return "records", ITEM_METRICS[paper.key][name]
    return "run", lambda t: t[name]


def seeds_holding(runs: Mapping[str, dict], level: str, name: str) -> dict:
    """seed -> record -> tallies of the runs that hold `name`: their held-out records, or their one run record."""
    if level == "records":
        return {seed: run["records"] for seed, run in runs.items()}
    return {seed: {RUN_RECORD: run["run"]} for seed, run in runs.items() if name in run["run"]}


def summary_of(paper: Paper, runs: Mapping[str, dict], name: str, resamples: int) -> dict | None:
    """One recipe's `name` over its seeds (`runs`: seed -> load_run)."""
    level, metric = metric_of(paper, name)
    seeds = seeds_holding(runs, level, name)
    try:
        return hierarchical_bootstrap(seeds, metric, resamples) if seeds else None
    except KeyError:  # a condition these runs do not hold
        return None


def paired_summary(paper: Paper, runs: Mapping[str, dict], baseline: Mapping[str, dict], name: str,
                   resamples: int) -> dict | None:
    """`name` of one recipe less that of another, same seed against same seed, same held-out records."""
    level, metric = metric_of(paper, name)
    seeds = paired_seeds(seeds_holding(runs, level, name), seeds_holding(baseline, level, name))
    try:
        return hierarchical_bootstrap(seeds, _difference(side(metric, "a:"), side(metric, "b:")), resamples) \
            if seeds else None
    except KeyError:
        return None


def load_all(archive_root: Path) -> dict[tuple[str, str], dict[str, dict]]:
    """(paper, recipe) -> seed -> load_run of every archived run."""
    return {(paper.key, recipe.name): {path.name.removeprefix("seed"): load_run(path)
                                       for path in sorted((archive_root / paper.key / recipe.name).glob("seed*"))
                                       if (path / "predictions.jsonl.gz").is_file()}
            for paper in PAPERS for recipe in paper.recipes}


def collect(loaded: dict[tuple[str, str], dict[str, dict]], resamples: int) -> dict:
    """results.json's `papers`: per paper and recipe, every seed's numbers, their summaries and the held-out
    records left out for sharing content with training."""
    papers: dict = {}
    for paper in PAPERS:
        recipes: dict = {}
        for recipe in paper.recipes:
            runs = loaded[(paper.key, recipe.name)]
            names = sorted({*ITEM_METRICS[paper.key], *(n for run in runs.values() for n in run["run"])})
            summaries = {name: summary_of(paper, runs, name, resamples) for name in names}
            summaries = {name: summary for name, summary in summaries.items() if summary is not None}
            recipes[recipe.name] = {
                "seeds": {seed: {name: s["per_seed"][seed] for name, s in summaries.items() if seed in s["per_seed"]}
                          for seed in runs},
                "summary": summaries,
                "overlap": {seed: run["overlap"] for seed, run in runs.items()},
            }
        papers[paper.key] = {"title": paper.title, "recipes": recipes}
    return papers
