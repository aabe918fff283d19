"""scripts/reproduce.py: the quick run writes every table, plot and number from real runs, a rerun skips them,
and the README section is generated from results.json."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "reproduce.py"


def load_script():
    """scripts/ is no package: import the script by path (registered first, as dataclasses need)."""
    if "reproduce" not in sys.modules:
        spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
        sys.modules["reproduce"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["reproduce"])
    return sys.modules["reproduce"]


def test_summary_is_the_t_interval_over_seeds():
    summary = load_script().summarise([1.0, 2.0, 3.0])
    # mean 2, sample std 1, t(0.975, df=2) = 4.302653 -> half width 4.302653 / sqrt(3)
    assert summary["mean"] == 2.0 and summary["std"] == 1.0 and summary["n"] == 3 and summary["positive"] == 3
    assert summary["ci95"] == pytest.approx([2 - 2.484138, 2 + 2.484138], abs=1e-6)
    assert load_script().summarise([0.5])["ci95"] is None


def reproduce(*args, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XMODAL_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def last_step(run_directory: Path) -> int:
    return max(json.loads(line)["step"] for line in (run_directory / "metrics.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_quick_reproduction_writes_tables_plots_and_skips_finished_runs(tmp_path):
    runs, out, cache = tmp_path / "runs", tmp_path / "results", tmp_path / "cache"
    first = reproduce("--quick", "--runs", str(runs), "--out", str(out), cache=cache)
    assert "0 of 22 runs already finished" in first.stdout and "[done 22/22]" in first.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["finished_runs"] == 22 and results["run"]["failures"] == []
    script = load_script()
    for paper in script.PAPERS:
        table = (out / f"{paper.key}.md").read_text()
        for recipe in (recipe for recipe in paper.recipes if recipe.default):  # extras: run below, when named
            entry = results["papers"][paper.key]["recipes"][recipe.name]
            assert sorted(entry["seeds"]) == ["0", "1"]
            assert f"| {recipe.name} | 2 |" in table
        for kind in ("by_condition", "gap", "training"):
            with Image.open(out / f"{paper.key}_{kind}.png") as image:
                assert image.width > 300 and image.height > 200
    # the table's numbers are the eval.json numbers of the two seeds, independently recomputed
    gaps = []
    for seed in range(2):
        report = json.loads((runs / "modality_gap" / "kl" / f"seed{seed}" / "eval" / "eval.json").read_text())
        conditions = report["results"][0]["conditions"]
        gaps.append(conditions["text_centric"]["accuracy"] - conditions["vision_centric"]["accuracy"])
    summary = results["papers"]["modality_gap"]["recipes"]["kl"]["summary"]["modality_gap"]
    assert summary["mean"] == pytest.approx(statistics.fmean(gaps)) and summary["std"] == pytest.approx(statistics.stdev(gaps))
    # kl_curriculum fine-tunes the kl run's final model, the RL recipes full_text's
    for recipe, parent in (("kl_curriculum", "kl"), ("rl_kl", "full_text")):
        config = (runs / "modality_gap" / recipe / "seed1" / "config.yaml").read_text()
        assert str(runs / "modality_gap" / parent / "seed1" / "final") in config
    # the over-training curves come from the in-training callbacks: held-out answers and the attention probe
    rows = [json.loads(line) for line in (runs / "modality_gap" / "rl_kl" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert {1, 2} <= {row["step"] for row in rows if "eval/accuracy/vision_centric" in row}
    assert {1, 2} <= {row["step"] for row in rows if "imbalance/ratio" in row}
    assert any("reward" in row for row in rows)
    # paper 1's two mixings trained on the same instructions: one epoch of the same pool
    steps = {name: last_step(runs / "modal_imbalance" / name / "seed0") for name in ("it", "hit")}
    assert steps["hit"] < steps["it"]

    # a rerun finds every run finished and only rewrites the results
    shutil.rmtree(out)
    again = reproduce("--quick", "--runs", str(runs), "--out", str(out), cache=cache)
    assert "22 of 22 runs already finished; 0 to run" in again.stdout and "[start]" not in again.stdout
    assert json.loads((out / "results.json").read_text())["papers"] == results["papers"]

    # an extra ablation runs only when named: instance-level mixing with about as many optimizer steps as
    # dataset-level mixing (twice the passes over half as many instances, each epoch's last batch rounded up)
    extra = reproduce("--quick", "--runs", str(runs), "--out", str(out), "--recipes", "hit_matched_steps", cache=cache)
    assert "0 of 2 runs already finished" in extra.stdout
    matched = last_step(runs / "modal_imbalance" / "hit_matched_steps" / "seed0")
    assert matched > steps["hit"] and matched == pytest.approx(steps["it"], rel=0.15)
    assert json.loads((out / "results.json").read_text())["run"]["extra_finished_runs"] == {"hit_matched_steps": 2}

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{script.README_START}\nthe previous section\n{script.README_END}\nafter\n")
    reproduce("--update-readme", "--out", str(out), "--readme", str(readme), cache=cache)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith("after\n") and "the previous section" not in text
    assert script.markdown_table(script.MODALITY_GAP, results) in text
    assert f"commit `{results['run']['commit']}`" in text
