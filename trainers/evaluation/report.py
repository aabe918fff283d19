"""Predictions -> rates per condition, derived metrics and paired-bootstrap confidence intervals -> results table.

Every rate is a share of answers (all samples of all items in a group). Rates:
- `conditions/<c>`: accuracy (`answers_match`) of condition `c`;
- `modality_gap` = acc(text_centric) - acc(vision_centric) (paper 2), when both were evaluated;
- with `builder=conflict` and a judge: `conflict_recognition/<c>` (share of conflict answers the judge says
  recognise the conflict), `control_accuracy/<c>` (accuracy on `<c>_control`) and `false_conflict/<c>` (share
  of control answers the judge says report a conflict: a model that always says "conflict" recognises every
  conflict).

Confidence intervals: a percentile bootstrap that resamples source records with replacement; every rate and the
gap are computed on the same resamples, so the gap's interval is paired (both views of a record move together)
and a record's several conflict variants stay together.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from xmodal.trainers.evaluation.answers import Prediction

GAP = ("modality_gap", "text_centric", "vision_centric")


def rate_tallies(predictions: list[Prediction]) -> dict[str, dict[str, list[int]]]:
    """{rate name: {record: [hits, answers]}} for every condition and, for judged conflict items, the conflict rates."""
    tallies: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))

    def add(name: str, record: str, hits: list[bool]) -> None:
        tally = tallies[name][record]
        tally[0] += sum(hits)
        tally[1] += len(hits)

    for prediction in predictions:
        condition, record = prediction.item.condition, prediction.item.record
        add(f"conditions/{condition}", record, prediction.correct)
        if prediction.said_conflict is None:
            continue
        if condition.endswith("_control"):
            base = condition.removesuffix("_control")
            add(f"control_accuracy/{base}", record, prediction.correct)
            add(f"false_conflict/{base}", record, prediction.said_conflict)
        else:
            add(f"conflict_recognition/{condition}", record, prediction.said_conflict)
    return {name: dict(by_record) for name, by_record in sorted(tallies.items())}


def bootstrap_rates(
    tallies: dict[str, dict[str, list[int]]], resamples: int = 1000, seed: int = 0, chunk: int = 100
) -> tuple[list[str], np.ndarray]:
    """(rate names, [resamples, rates] array): each rate on `resamples` resamples of the records, drawn with
    replacement (a multinomial count per record), the same resamples for every rate. A rate whose records
    were all left out of a resample is NaN there."""
    names = list(tallies)
    records = sorted({record for by_record in tallies.values() for record in by_record})
    index = {record: position for position, record in enumerate(records)}
    hits = np.zeros((len(records), len(names)))
    answers = np.zeros((len(records), len(names)))
    for column, name in enumerate(names):
        for record, (record_hits, record_answers) in tallies[name].items():
            hits[index[record], column] = record_hits
            answers[index[record], column] = record_answers
    rng = np.random.default_rng(seed)
    uniform = np.full(len(records), 1 / len(records))
    rates = []
    for start in range(0, resamples, chunk):
        weights = rng.multinomial(len(records), uniform, size=min(chunk, resamples - start)).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            rates.append((weights @ hits) / (weights @ answers))
    return names, np.concatenate(rates)


def percentile_interval(values: np.ndarray, confidence: float) -> list[float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def summarise(predictions: list[Prediction], resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """{"conditions": {c: rate}, "derived": {name: rate or gap}} where a rate is {"accuracy", "correct",
    "answers", "count" (items), "ci"} and the gap is {"difference", "ci"}; `ci` = [low, high] at `confidence`,
    left out when `resamples` is 0 (the in-training callback logs point values only)."""
    tallies = rate_tallies(predictions)
    names, resampled = bootstrap_rates(tallies, resamples, seed) if resamples else (list(tallies), None)
    items: dict[str, int] = defaultdict(int)
    for prediction in predictions:
        items[prediction.item.condition] += 1
    report: dict[str, dict] = {"conditions": {}, "derived": {}}
    rates = {}
    for column, name in enumerate(names):
        hits = sum(tally[0] for tally in tallies[name].values())
        answers = sum(tally[1] for tally in tallies[name].values())
        rates[name] = hits / answers
        group, _, label = name.partition("/")
        entry = {"accuracy": rates[name], "correct": hits, "answers": answers}
        if resampled is not None:
            entry["ci"] = percentile_interval(resampled[:, column], confidence)
        if group == "conditions":
            report["conditions"][label] = {**entry, "count": items[label]}
        else:
            report["derived"][name] = entry
    gap_name, minuend, subtrahend = GAP
    first, second = f"conditions/{minuend}", f"conditions/{subtrahend}"
    if first in rates and second in rates:
        report["derived"][gap_name] = {"difference": rates[first] - rates[second]}
        if resampled is not None:
            differences = resampled[:, names.index(first)] - resampled[:, names.index(second)]
            report["derived"][gap_name]["ci"] = percentile_interval(differences, confidence)
    report["derived"] = dict(sorted(report["derived"].items()))
    return report


def flat_scalars(summary: dict, prefix: str) -> dict[str, float]:
    """`<prefix>/accuracy/<c>`, `<prefix>/modality_gap`, `<prefix>/conflict_recognition/<c>`, ...: the point
    values of a summary, for trainer.log."""
    scalars = {f"{prefix}/accuracy/{condition}": rate["accuracy"] for condition, rate in summary["conditions"].items()}
    for name, value in summary["derived"].items():
        scalars[f"{prefix}/{name}"] = value["difference"] if "difference" in value else value["accuracy"]
    return scalars


def results_table(reports: list[dict]) -> str:
    """Markdown: one row per checkpoint, a column per condition and per derived metric, each with its interval."""
    conditions = sorted({c for report in reports for c in report["conditions"]})
    derived = sorted({name for report in reports for name in report["derived"]})
    header = ["checkpoint", *conditions, *derived]
    rows = [
        [report["checkpoint"]]
        + [_cell(report["conditions"].get(c)) for c in conditions]
        + [_cell(report["derived"].get(name)) for name in derived]
        for report in reports
    ]
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def _cell(value: dict | None) -> str:
    if value is None:
        return "-"
    signed = "difference" in value
    number = f"{value['difference']:+.3f}" if signed else f"{value['accuracy']:.3f}"
    if "ci" in value:
        low, high = value["ci"]
        number += f" [{low:+.3f}, {high:+.3f}]" if signed else f" [{low:.3f}, {high:.3f}]"
    return number if signed else f"{number} ({value['correct']}/{value['answers']})"
