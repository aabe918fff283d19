"""scripts/reproduce/: the hierarchical bootstrap on hand-computed cases, tallies and metrics of one run, and the
quick run writing every table, plot and number from real runs, then `--report` rebuilding them from results/runs/
alone."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from scripts.reproduce import papers, report, runner, statistics
from scripts.reproduce.statistics import hierarchical_bootstrap, rate

REPO = Path(__file__).resolve().parents[2]
ACCURACY = rate("correct", "x")


def records(*outcomes: int) -> dict:
    """One record per outcome (1 correct, 0 wrong), one answer each, condition x."""
    return {f"r{n}": {"answers/x": 1.0, "correct/x": float(o)} for n, o in enumerate(outcomes)}


def test_two_seeds_without_item_spread_give_the_range_of_their_means():
    # seeds at 0 and at 1, every record alike: drawn seed pairs average 0 (1/4), 0.5 (1/2) or 1 (1/4), so the
    # 95 % interval is [0, 1] and the estimate the mean over seeds
    summary = hierarchical_bootstrap({"0": records(0, 0, 0), "1": records(1, 1, 1)}, ACCURACY, resamples=4000)
    assert summary["mean"] == 0.5 and summary["ci95"] == [0.0, 1.0] and summary["positive"] == 1
    assert summary["per_seed"] == {"0": 0.0, "1": 1.0} and summary["records"] == [3, 3]


def test_item_sampling_widens_an_interval_that_seeds_alone_would_call_exact():
    # two identical seeds (a t-interval over seeds: [0.5, 0.5]); each seed's rate over its 2 records resamples to
    # 0, 0.5 or 1: the mean of two such draws is 0 with probability 1/16 > 2.5 %, 1 likewise
    summary = hierarchical_bootstrap({"0": records(1, 0), "1": records(1, 0)}, ACCURACY, resamples=4000)
    assert summary["mean"] == 0.5 and summary["ci95"] == [0.0, 1.0]
    one_record_each = hierarchical_bootstrap({"0": records(1), "1": records(1)}, ACCURACY, resamples=500)
    assert one_record_each["ci95"] == [1.0, 1.0]
    assert hierarchical_bootstrap({"0": records(1, 0)}, ACCURACY)["ci95"] is None  # one seed: no spread known


def test_a_paired_difference_resamples_both_recipes_on_the_same_records():
    paper = papers.MODALITY_GAP

    def runs(*outcomes: int) -> dict:
        tallies = {f"r{n}": {"answers/text_centric": 1.0, "correct/text_centric": float(o)} for n, o in enumerate(outcomes)}
        return {seed: {"records": tallies, "run": {}} for seed in ("0", "1")}

    # the same answers on the same records: every joint resample differs by exactly 0 (resampled apart, they would not)
    same = statistics.paired_summary(paper, runs(1, 0, 1, 0), runs(1, 0, 1, 0), "text_centric", 2000)
    assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0]
    # one record better: per seed +1/4; a joint resample of 4 records holds it 0 to 4 times
    better = statistics.paired_summary(paper, runs(1, 1, 1, 0), runs(1, 0, 1, 0), "text_centric", 2000)
    assert better["mean"] == 0.25 and better["per_seed"] == {"0": 0.25, "1": 0.25} and better["ci95"][0] >= 0


def test_a_rate_sums_answers_over_records_before_dividing():
    seeds = {"0": {"a": {"answers/x": 3.0, "correct/x": 3.0}, "b": {"answers/x": 1.0, "correct/x": 0.0}}}
    assert hierarchical_bootstrap(seeds, ACCURACY)["mean"] == 0.75  # 3 of 4 answers, not the mean of 1 and 0


def test_tallies_leave_out_overlapping_records_and_discrimination_subtracts_false_alarms():
    predictions = [
        {"record": "a", "condition": "cross_modal", "correct": [True], "said_conflict": [True]},
        {"record": "a", "condition": "cross_modal_control", "correct": [False], "said_conflict": [True]},
        {"record": "b", "condition": "cross_modal", "correct": [True], "said_conflict": [True]},
        {"record": "b", "condition": "cross_modal_control", "correct": [True], "said_conflict": [False]},
        {"record": "c", "condition": "cross_modal", "correct": [False], "said_conflict": [False]},
    ]
    tallies = statistics.record_tallies(predictions, excluded={"c"})
    assert sorted(tallies) == ["a", "b"]
    metric = statistics.ITEM_METRICS["modal_imbalance"]["discrimination/cross_modal"]
    # recognition 2/2, false alarms 1/2 -> 0.5
    assert hierarchical_bootstrap({"0": tallies}, metric)["mean"] == 0.5


def test_verdict_outcomes_need_the_side_the_threshold_and_enough_seeds():
    verdict = report.Verdict("X", papers.MODALITY_GAP, "claim", "full_text", "modality_gap", threshold=0.05)
    decided = {"mean": 0.2, "ci95": [0.1, 0.3], "n": 5}
    assert report.outcome(verdict, decided, 5) == "appears"
    assert report.outcome(verdict, {**decided, "mean": 0.03, "ci95": [0.01, 0.05]}, 5).startswith("does not appear")
    assert report.outcome(verdict, {**decided, "mean": -0.2, "ci95": [-0.3, -0.1]}, 5) == "is reversed"
    assert report.outcome(verdict, {**decided, "ci95": [-0.1, 0.3]}, 5) == "does not appear (the interval contains 0)"
    assert report.outcome(verdict, decided, 6).startswith("not decided")


def reproduce(*args, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XMODAL_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def last_step(run_directory: Path) -> int:
    return max(json.loads(line)["step"] for line in (run_directory / "metrics.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_quick_reproduction_writes_tables_plots_and_rebuilds_them_from_the_archive(tmp_path):
    runs, out, cache = tmp_path / "runs", tmp_path / "results", tmp_path / "cache"
    default_runs = sum(r.default for p in papers.PAPERS for r in p.recipes) * len(papers.QUICK.seeds)
    first = reproduce("--quick", "--runs", str(runs), "--out", str(out), cache=cache)
    assert f"0 of {default_runs} runs already finished" in first.stdout
    assert f"[done {default_runs}/{default_runs}]" in first.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["finished_runs"] == default_runs and results["run"]["failures"] == []
    assert results["run"]["training_commit"] != "unknown" and results["run"]["held_out_records"] > 0
    for paper in papers.PAPERS:
        table = (out / f"{paper.key}.md").read_text()
        assert not [r.name for r in paper.recipes if not r.default and f"| {r.name} |" in table]  # extras not run
        for recipe in (recipe for recipe in paper.recipes if recipe.default):
            entry = results["papers"][paper.key]["recipes"][recipe.name]
            assert sorted(entry["seeds"]) == ["0", "1"] and sorted(entry["overlap"]) == ["0", "1"]
            assert f"| {recipe.name} | 2 |" in table
            for seed in ("0", "1"):  # every archived file the report reads
                archived = out / "runs" / paper.key / recipe.name / f"seed{seed}"
                expected = {name for _, name in runner.ARCHIVED} | {"span.json"}
                expected -= {"proxy_predictions.jsonl.gz"} if not paper.proxy else set()
                expected -= {"start.json"} if not recipe.uncertain_start else set()
                assert {p.name for p in archived.iterdir()} == expected
        for kind in ("by_condition", "gap", "training"):
            with Image.open(out / f"{paper.key}_{kind}.png") as image:
                assert image.width > 300 and image.height > 200
    # paper 1's primary figure: the per-token share, the norm-mode share and the raw mass of each run
    it_seed = results["papers"]["modal_imbalance"]["recipes"]["it"]["seeds"]["0"]
    assert {"imbalance/per_token/cross_modal", "imbalance/norm/cross_modal", "imbalance/mass/cross_modal"} <= set(it_seed)
    # the table's accuracy is the archived predictions' share of correct answers, recomputed by hand
    for seed in ("0", "1"):
        lines = gzip.open(out / "runs" / "modality_gap" / "kl" / f"seed{seed}" / "predictions.jsonl.gz", "rt")
        items = [json.loads(line) for line in lines]
        text = [c for item in items if item["condition"] == "text_centric" for c in item["correct"]]
        assert results["papers"]["modality_gap"]["recipes"]["kl"]["seeds"][seed]["text_centric"] == sum(text) / len(text)
    # kl_curriculum fine-tunes the kl run's final model, the RL recipes full_text's step chosen by the
    # pre-registered rule (recorded in start.json, archived)
    config = (runs / "modality_gap" / "kl_curriculum" / "seed1" / "config.yaml").read_text()
    assert str(runs / "modality_gap" / "kl" / "seed1" / "final") in config
    start = json.loads((out / "runs" / "modality_gap" / "rl_kl" / "seed1" / "start.json").read_text())
    config = (runs / "modality_gap" / "rl_kl" / "seed1" / "config.yaml").read_text()
    assert str(runs / "modality_gap" / "full_text" / "seed1" / f"checkpoint-{start['step']}") in config
    assert results["papers"]["modality_gap"]["recipes"]["rl_kl"]["seeds"]["1"]["rl/start_step"] == start["step"]
    # paper 1's mixings train on the same instructions: one epoch of the same pool, fewer instances mixed
    steps = {name: last_step(runs / "modal_imbalance" / name / "seed0") for name in ("it", "hit")}
    assert steps["hit"] < steps["it"]
    verdict_lines = (out / "verdicts.md").read_text()
    assert verdict_lines.count("- **P") == len(report.VERDICTS) and verdict_lines.count("Unimodal competence of") == 3

    # a rerun trains only what a kill left unfinished (here: after the training step's logs, before final/)
    killed = runs / "modal_imbalance" / "hit" / "seed1"
    shutil.rmtree(killed / "final")
    shutil.rmtree(killed / "eval")
    again = reproduce("--quick", "--runs", str(runs), "--out", str(out), cache=cache)
    assert f"{default_runs - 1} of {default_runs} runs already finished; 1 to run" in again.stdout
    assert again.stdout.count("[start]") == 1 and f"[done {default_runs}/{default_runs}]" in again.stdout
    rerun = json.loads((out / "results.json").read_text())["papers"]["modal_imbalance"]["recipes"]["hit"]["seeds"]["1"]
    assert rerun == results["papers"]["modal_imbalance"]["recipes"]["hit"]["seeds"]["1"]  # the same seed, retrained
    again = reproduce("--quick", "--runs", str(runs), "--out", str(out), cache=cache)
    assert f"{default_runs} of {default_runs} runs already finished; 0 to run" in again.stdout
    assert "[start]" not in again.stdout

    # --report rebuilds everything from results/runs/ alone: the run directories are gone
    shutil.rmtree(runs)
    for path in out.iterdir():
        if path.name != "runs":
            path.unlink()
    reproduce("--quick", "--report", "--out", str(out), cache=cache)
    rebuilt = json.loads((out / "results.json").read_text())
    assert rebuilt["papers"] == results["papers"]
    assert (out / "modal_imbalance_training.png").is_file() and (out / "modality_gap.md").is_file()

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{report.README_START}\nthe previous section\n{report.README_END}\nafter\n")
    section = report.readme_section(rebuilt, ["- a verdict"])
    report.update_readme(section, readme)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith("after\n") and "the previous section" not in text
    assert report.markdown_table(papers.MODALITY_GAP, rebuilt) in text and "- a verdict" in text


def test_the_rl_start_is_the_first_saved_step_with_an_uncertain_vision_view(tmp_path):
    parent, run = tmp_path / "full_text", tmp_path / "rl"
    curve = {2: 0.95, 4: 0.8, 6: 0.65, 8: 0.5, 10: 0.35}  # step -> in-training vision-centric accuracy
    parent.mkdir()
    (parent / "metrics.jsonl").write_text("".join(
        json.dumps({"step": step, runner.VISION_CURVE: accuracy}) + "\n" for step, accuracy in curve.items()))
    for step in (2, 4, 8, 10):  # step 6, inside the band, has no saved model: not a candidate
        (parent / f"checkpoint-{step}").mkdir()
    assert runner.uncertain_start(parent, run) == parent / "checkpoint-8"
    assert json.loads((run / "start.json").read_text()) == {"step": 8, "vision_centric_accuracy": 0.5, "inside_band": True}
    for step in (8, 10):  # none left inside [0.3, 0.7]: the closest to 0.5 (0.8 at step 4)
        (parent / f"checkpoint-{step}").rmdir()
    assert runner.uncertain_start(parent, run) == parent / "checkpoint-4"
    assert not json.loads((run / "start.json").read_text())["inside_band"]


def test_a_gap_closed_by_losing_text_centric_accuracy_is_labelled_so():
    def runs(text: float, vision: float) -> dict:
        """5 seeds of 4 records, each answered alike: `text` and `vision` of them correct in each view."""
        record = {"answers/text_centric": 1.0, "correct/text_centric": text,
                  "answers/vision_centric": 1.0, "correct/vision_centric": vision}
        return {str(seed): {"records": {f"r{n}": record for n in range(4)}, "run": {}} for seed in range(5)}

    narrows = next(v for v in report.VERDICTS if v.key == "P2-4")  # curriculum narrows full_text's gap
    assert (narrows.minuend, narrows.subtrahend) == ("full_text", "curriculum")
    loaded = {("modality_gap", "full_text"): runs(1.0, 0.5), ("modality_gap", "curriculum"): runs(0.5, 0.5)}
    line = report.view_changes(narrows, loaded, 200)
    assert "text-centric -0.500" in line and "by LOSING text-centric accuracy" in line
    loaded[("modality_gap", "curriculum")] = runs(1.0, 1.0)  # the vision view caught up instead
    assert report.view_changes(narrows, loaded, 200).endswith("vision-centric accuracy rises.")


def test_the_rl_table_lists_the_start_step_of_each_seed_and_averages_the_rest():
    def summary(per_seed: dict) -> dict:
        return {"mean": sum(per_seed.values()) / len(per_seed), "ci95": [0.1, 0.9], "n": len(per_seed),
                "per_seed": per_seed}

    entry = {"seeds": {"0": {}, "1": {}, "10": {}, "2": {}},
             "summary": {"rl/reward_last_fifth": summary({"0": 0.25, "1": 0.5, "10": 0.5, "2": 0.75}),
                         "rl/start_step": summary({"0": 200.0, "1": 600.0, "10": 400.0, "2": 200.0})}}
    results = {"papers": {"modality_gap": {"recipes": {"rl_kl": entry}}}}
    row = next(line for line in report.markdown_table(papers.MODALITY_GAP, results).splitlines()
               if line.startswith("| rl_kl |"))
    assert "| 200, 600, 200, 400 |" in row  # seeds in numeric order (0, 1, 2, 10), not averaged
    assert "| 0.500 [0.100, 0.900] |" in row


def export_print_and_fail(cfg) -> None:
    """A step that leaves the environment changed, prints and fails."""
    os.environ["XMODAL_LEFT_BEHIND"] = "1"
    print(f"step ran with seed {cfg.seed}")
    raise ValueError("the step failed\nsecond line")


def test_a_failing_job_leaves_its_traceback_in_its_log_and_the_worker_as_it_was(tmp_path, capfd, monkeypatch):
    """A pool process runs run after run: a failed one reports its error's first line, its log keeps what the run
    printed and the traceback, and the process's output and environment are its own again."""
    monkeypatch.setitem(runner.ENTRY_POINTS, "failing", ("config", __name__, "export_print_and_fail"))
    job = tmp_path / "job.json"
    job.write_text(json.dumps([["failing", ["seed=3"]]]))
    log = tmp_path / "run.log"
    environment = dict(os.environ)
    with pytest.raises(RuntimeError, match="^ValueError: the step failed$"):
        runner.run_job(job, log)
    text = log.read_text()
    assert "step ran with seed 3" in text and "Traceback (most recent call last)" in text
    assert dict(os.environ) == environment
    os.write(1, b"after the job\n")  # file descriptor 1 itself, as the libraries' C code writes
    assert capfd.readouterr().out.endswith("after the job\n") and "after the job" not in log.read_text()
