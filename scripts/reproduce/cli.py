"""The command line: run the plan (or nothing, `--report`), archive the finished runs, write results/."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from xmodal.core.atomic import atomic_write_text

from . import __doc__ as DOC
from .papers import EXTRAS, FULL, ORDER, PAPERS, QUICK, plan
from .plots import plot_all
from .report import markdown_table, readme_section, update_readme, verdicts
from .runner import REPO, archive, git_commit, run_all
from .statistics import collect, load_all

MIN_SEEDS = 5  # results/preregistration.md: no verdict from fewer seeds


def archived_runs(archive_root: Path) -> list[Path]:
    return sorted(path.parent for path in archive_root.glob("*/*/seed*/predictions.jsonl.gz"))


def span_minutes(folders: list[Path]) -> float:
    spans = [json.loads((folder / "span.json").read_text()) for folder in folders if (folder / "span.json").is_file()]
    return (max(s["end"] for s in spans) - min(s["start"] for s in spans)) / 60 if spans else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DOC.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of every step (minutes, not hours)")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default results/, quick: "
                        "results-quick/); the finished runs' files are archived under <out>/runs/")
    parser.add_argument("--runs", type=Path, default=None, help="run directories (default runs/reproduce[-quick])")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--recipes", nargs="+", choices=ORDER, default=[n for n in ORDER if n not in EXTRAS],
                        help=f"run these recipes (default: all but the extra ablations {', '.join(EXTRAS)}; the "
                        "tables report whatever runs have finished)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="run only these of the budget's seeds")
    parser.add_argument("--cache-dir", default=os.environ.get("XMODAL_CACHE", str(Path.home() / ".cache" / "xmodal")))
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--report", action="store_true", help="run nothing: write results.json, the tables, the "
                        "plots and (unless --quick) the README section from <out>/runs/ alone")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    suffix = "-quick" if args.quick else ""
    out = args.out or REPO / f"results{suffix}"
    archive_root = out / "runs"
    started = time.perf_counter()
    planned = plan(args.runs or REPO / "runs" / f"reproduce{suffix}", budget)
    failures = []
    if not args.report:
        # a recipe that starts from another's model brings that recipe along
        wanted = set(args.recipes) | {r.recipe.starts_from for r in planned if r.recipe.name in args.recipes} - {None}
        runs = [run for run in planned if run.recipe.name in wanted and (args.seeds is None or run.seed in args.seeds)]
        runs_root = args.runs or REPO / "runs" / f"reproduce{suffix}"
        failures = run_all(runs, runs_root, budget, args.jobs, args.cache_dir)
        for run in planned:
            if run.finished():
                archive(run, archive_root)
    folders = archived_runs(archive_root)
    default = {f"{r.paper.key}/{r.recipe.name}" for r in planned if r.recipe.default}
    is_default = [f"{folder.parent.parent.name}/{folder.parent.name}" in default for folder in folders]
    loaded = load_all(archive_root)
    papers = collect(loaded, budget.bootstrap_resamples)
    overlaps = [o for p in papers.values() for r in p["recipes"].values() for o in r["overlap"].values()]
    commits = sorted({(folder / "commit.txt").read_text().strip() for folder in folders
                      if (folder / "commit.txt").is_file()})
    results = {
        "run": {
            "command": "python scripts/reproduce.py" + (" --quick" if args.quick else ""),
            "commit": git_commit(),  # the code that wrote this report
            "training_commit": ", ".join(commits) or "unknown",  # the code the runs trained at
            "results_file": os.path.relpath(out / "results.json", REPO),
            "quick": args.quick,
            "seeds": list(budget.seeds),
            "planned_runs": sum(r.recipe.default for r in planned),  # the default recipes'
            "finished_runs": sum(is_default),
            "extra_finished_runs": {name: sum(f.parent.name == name for f in folders) for name in EXTRAS},
            "failures": failures,
            "wall_minutes": (time.perf_counter() - started) / 60,  # this invocation
            # per paper: the papers' runs may come from different rounds (results/preregistration-2.md)
            "span_minutes": {paper.key: span_minutes([f for f, d in zip(folders, is_default)
                                                      if d and f.parent.parent.name == paper.key])
                             for paper in PAPERS},
            "extra_span_minutes": span_minutes([f for f, d in zip(folders, is_default) if not d]),
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "eval_per_condition": budget.eval_per_condition,
            "held_out_records": sum(o["held_out_records"] or 0 for o in overlaps),
            "overlapping_records": sum(o["overlapping_records"] for o in overlaps),
            "settings_note": f"paper 2: {budget.gap_steps} steps per recipe; paper 1: {budget.mixing_epochs:g} "
                             f"pass(es) over {budget.mixing_records} records per source, the same instructions for "
                             "every mixing",
            "budget": dict(vars(budget)),
        },
        "papers": papers,
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    for paper in PAPERS:
        atomic_write_text(out / f"{paper.key}.md", f"# {paper.title}\n\n{markdown_table(paper, results)}")
    for path in plot_all(results, archive_root, out):
        print(f"plot: {path}", flush=True)
    verdict_lines = verdicts(loaded, budget.bootstrap_resamples, MIN_SEEDS)
    atomic_write_text(out / "verdicts.md", "\n".join(verdict_lines) + "\n")
    if not args.quick:
        update_readme(readme_section(results, verdict_lines), args.readme)
    print(f"results: {out / 'results.json'} ({results['run']['wall_minutes']:.1f} min)", flush=True)
    for failure in failures:
        print(f"[FAILED] {failure.splitlines()[0]}", flush=True)
    return 1 if failures else 0
