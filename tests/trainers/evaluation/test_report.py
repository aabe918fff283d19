"""trainers/evaluation/report.py: the paired-bootstrap intervals against independent computations, and the table."""

from __future__ import annotations

import math
import random

import pytest

from xmodal.trainers.evaluation.answers import EvalItem, Prediction
from xmodal.trainers.evaluation.report import flat_scalars, results_table, summarise


def _predictions(scores: dict[str, list[list[bool]]]) -> list[Prediction]:
    """{condition: per record, the correctness of that record's items} -> one single-sample Prediction per item."""
    predictions = []
    for condition, per_record in scores.items():
        for record, hits in enumerate(per_record):
            for n, hit in enumerate(hits):
                item = EvalItem(f"r{record}:{condition}:{n}", condition, [], [], "1", f"r{record}")
                predictions.append(Prediction(item, "", ["1"], [hit], None, True))
    return predictions


def _naive_bootstrap(scores: dict[str, list[list[bool]]], resamples: int, seed: int, confidence: float) -> dict:
    """Intervals written out the plain way: draw record indices with replacement, pool those records' items."""
    rng = random.Random(seed)
    records = len(next(iter(scores.values())))
    rates: dict[str, list[float]] = {name: [] for name in [*scores, "gap"]}
    for _ in range(resamples):
        drawn = [rng.randrange(records) for _ in range(records)]
        for condition, per_record in scores.items():
            pooled = [hit for record in drawn for hit in per_record[record]]
            rates[condition].append(sum(pooled) / len(pooled))
        rates["gap"].append(rates["text_centric"][-1] - rates["vision_centric"][-1])

    def interval(values: list[float]) -> list[float]:
        ordered = sorted(values)
        tail = (1 - confidence) / 2

        def quantile(q: float) -> float:  # linear interpolation, as numpy's default
            position = q * (len(ordered) - 1)
            low = math.floor(position)
            return ordered[low] + (ordered[min(low + 1, len(ordered) - 1)] - ordered[low]) * (position - low)

        return [quantile(tail), quantile(1 - tail)]

    return {name: interval(values) for name, values in rates.items()}


def _correlated_records(records: int, seed: int) -> dict[str, list[list[bool]]]:
    """Text-centric right on 70 % of records; vision-centric right on 80 % of those and 20 % of the others;
    1 to 3 items per record (a record's items share its difficulty)."""
    rng = random.Random(seed)
    text, vision = [], []
    for _ in range(records):
        items = rng.randint(1, 3)
        easy = rng.random() < 0.7
        text.append([easy] * items)
        vision.append([rng.random() < (0.8 if easy else 0.2) for _ in range(items)])
    return {"text_centric": text, "vision_centric": vision}


def test_intervals_equal_a_plain_record_bootstrap():
    scores = _correlated_records(150, seed=1)
    summary = summarise(_predictions(scores), resamples=4000, seed=0)
    naive = _naive_bootstrap(scores, resamples=4000, seed=123, confidence=0.95)
    # Two independent Monte Carlo runs of the same bootstrap: their quantiles differ by ~0.002 at 4,000 resamples.
    for condition in scores:
        assert summary["conditions"][condition]["ci"] == pytest.approx(naive[condition], abs=0.01)
    assert summary["derived"]["modality_gap"]["ci"] == pytest.approx(naive["gap"], abs=0.01)


def test_accuracy_interval_matches_the_normal_approximation():
    rng = random.Random(2)
    hits = [[rng.random() < 0.3] for _ in range(600)]
    summary = summarise(_predictions({"vision_centric": hits}), resamples=4000, seed=0)
    rate = summary["conditions"]["vision_centric"]["accuracy"]
    half_width = 1.96 * math.sqrt(rate * (1 - rate) / len(hits))
    assert summary["conditions"]["vision_centric"]["ci"] == pytest.approx([rate - half_width, rate + half_width], abs=0.01)


def test_gap_interval_is_paired_over_records():
    rng = random.Random(3)
    text = [[rng.random() < 0.6] for _ in range(500)]
    # The same answers in both views: every resample has a gap of exactly 0 (an unpaired bootstrap would not).
    same = summarise(_predictions({"text_centric": text, "vision_centric": text}), resamples=500)
    assert same["derived"]["modality_gap"] == {"difference": 0.0, "ci": [0.0, 0.0]}
    # Vision flips 10 % of the records to wrong: the paired interval is the difference's, 1.96 sd(d) / sqrt(n).
    vision = [[hit and rng.random() > 0.1] for (hit,) in text]
    summary = summarise(_predictions({"text_centric": text, "vision_centric": vision}), resamples=4000, seed=0)
    differences = [t[0] - v[0] for t, v in zip(text, vision)]
    mean = sum(differences) / len(differences)
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / len(differences))
    half_width = 1.96 * sd / math.sqrt(len(differences))
    assert summary["derived"]["modality_gap"]["difference"] == pytest.approx(mean)
    assert summary["derived"]["modality_gap"]["ci"] == pytest.approx([mean - half_width, mean + half_width], abs=0.01)


def test_samples_count_as_answers_and_the_interval_is_seeded():
    item = EvalItem("a", "text_centric", [], [], "1", "r0")
    other = EvalItem("b", "text_centric", [], [], "1", "r1")
    predictions = [
        Prediction(item, "", ["1", "2", "1", "1"], [True, False, True, True], None, True),
        Prediction(other, "", ["2"] * 4, [False] * 4, None, True),
    ]
    summary = summarise(predictions, resamples=200, seed=5)
    assert {k: summary["conditions"]["text_centric"][k] for k in ("accuracy", "correct", "answers", "count")} == {
        "accuracy": 3 / 8, "correct": 3, "answers": 8, "count": 2,
    }
    # Two records: resamples hold r0 twice, r1 twice, or one of each.
    assert summary["conditions"]["text_centric"]["ci"] == [0.0, 0.75]
    assert summarise(predictions, resamples=200, seed=5) == summary


def test_table_and_logged_scalars_show_every_rate_with_its_interval():
    scores = {"text_centric": [[True], [True], [False]], "vision_centric": [[True], [False], [False]]}
    summary = summarise(_predictions(scores), resamples=200)
    table = results_table([{"checkpoint": "ckpt", **summary}]).splitlines()
    assert table[0] == "| checkpoint | text_centric | vision_centric | modality_gap |"
    low, high = summary["conditions"]["text_centric"]["ci"]
    gap_low, gap_high = summary["derived"]["modality_gap"]["ci"]
    assert table[2] == (
        f"| ckpt | 0.667 [{low:.3f}, {high:.3f}] (2/3) | "
        f"0.333 [{summary['conditions']['vision_centric']['ci'][0]:.3f}, "
        f"{summary['conditions']['vision_centric']['ci'][1]:.3f}] (1/3) | +0.333 [{gap_low:+.3f}, {gap_high:+.3f}] |"
    )
    assert flat_scalars(summary, "eval") == {
        "eval/accuracy/text_centric": pytest.approx(2 / 3),
        "eval/accuracy/vision_centric": pytest.approx(1 / 3),
        "eval/modality_gap": pytest.approx(1 / 3),
    }


def test_table_without_resamples_shows_point_values():
    summary = summarise(_predictions({"text_centric": [[True], [False]], "vision_centric": [[False], [False]]}), 0)
    assert "ci" not in summary["conditions"]["text_centric"] and "ci" not in summary["derived"]["modality_gap"]
    row = results_table([{"checkpoint": "ckpt", **summary}]).splitlines()[2]
    assert row == "| ckpt | 0.500 (1/2) | 0.000 (0/2) | +0.500 |"
