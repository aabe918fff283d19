"""Reproduce both papers' ablations on the embedded default (tiny LLaVA, offline synthetic task, CPU), 3 seeds.

    python scripts/reproduce.py            # the full run (results/ and the README's reproduction section)
    python scripts/reproduce.py --quick    # a smoke run of every step in a few minutes (what the tests run)
    python scripts/reproduce.py --update-readme   # rewrite the README section from results/results.json only

Every run is `xmodal-train` (or `xmodal-rl`) with the in-training attention probe and held-out evaluation, then
`xmodal-imbalance` and `xmodal-eval` on held-out records (another data seed): the same functions on the same
composed configs as those console scripts, in one process per run with one thread, two runs at a time (the
fastest on 2 cores, see the engineering notes). A run
directory `<runs>/<paper>/<recipe>/seed<N>` is finished when it holds `final/` and `eval/eval.json`; a rerun
skips finished runs, so an interrupted reproduction continues where it stopped.

Writes to `--out` (default `results/`): `results.json` (every run's numbers, and per recipe the mean, standard
deviation and 95 % t-interval over seeds), one Markdown table per paper, and plots: accuracy by condition per
recipe, the gap per recipe, and held-out accuracy / imbalance / loss over training steps per recipe (from
metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xmodal.core.atomic import atomic_file, atomic_write_text  # noqa: E402

EVAL_DATA_SEED = 7  # the held-out records: the training runs draw theirs with their own seed
CURVE_DATA_SEED = 1000003  # the in-training evaluation's held-out records (metrics=eval's default seed)
README_START, README_END = "<!-- reproduce:start -->", "<!-- reproduce:end -->"
CONFLICT_CONDITIONS = ("unimodal_text", "unimodal_image", "cross_modal", "cross_lingual")


@dataclass(frozen=True)
class Budget:
    """How long and how thoroughly: the full run and `--quick` differ only here."""

    seeds: tuple[int, ...]
    gap_records: int  # synthetic training records of each paper-2 run
    gap_steps: int  # training steps of each paper-2 recipe (kl_curriculum's stage 2 included)
    rl_steps: int  # GRPO steps of each RL recipe (from full_text's model)
    mixing_records: int  # records per source of conf/data/conflict_mixture.yaml (a conflict record: 2 instances)
    mixing_epochs: float  # passes over paper 1's instruction pool (matched data: the same for both mixings)
    eval_per_condition: int
    imbalance_per_condition: int
    curve_points: int  # in-training imbalance probes and held-out evaluations per run
    curve_per_condition: int  # held-out items per condition at each in-training evaluation
    logging_steps: int  # metrics.jsonl lines (the loss curves) every this many steps
    base_stage: dict = field(default_factory=dict)  # model.init.stage overrides (the quick run's tiny base)


FULL = Budget(seeds=(0, 1, 2), gap_records=2000, gap_steps=2000, rl_steps=120, mixing_records=600, mixing_epochs=15,
              eval_per_condition=128, imbalance_per_condition=32, curve_points=10, curve_per_condition=32,
              logging_steps=10)
QUICK = Budget(  # two seeds: enough for a standard deviation and an interval, and a third less time than three
    seeds=(0, 1), gap_records=64, gap_steps=4, rl_steps=2, mixing_records=16, mixing_epochs=1, eval_per_condition=4,
    imbalance_per_condition=2, curve_points=2, curve_per_condition=2, logging_steps=1,
    base_stage={"train_records": 64, "held_out_records": 16, "classifier_steps": 2, "caption_steps": 2,
                "text_qa_records": 16, "held_out_text_qa_records": 8, "min_classifier_accuracy": 0,
                "min_caption_exact_match": 0, "min_text_qa_accuracy": 0},
)


@dataclass(frozen=True)
class Recipe:
    name: str
    overrides: tuple[str, ...]
    starts_from: str | None = None  # the recipe (same seed) whose final/ this one fine-tunes
    entry: str = "train"  # train (xmodal-train) | rl (xmodal-rl)
    epoch_scale: float = 1.0  # paper 1: passes over the instruction pool, as a multiple of the budget's
    default: bool = True  # run without --recipes (false: an extra ablation, run by naming it)


@dataclass(frozen=True)
class Paper:
    key: str
    title: str
    recipes: tuple[Recipe, ...]
    evaluate: tuple[str, ...]  # xmodal-eval overrides (builder) on the held-out records
    imbalance: tuple[str, ...]  # xmodal-imbalance overrides
    conditions: tuple[str, ...]  # plotted per recipe
    gap: str  # the headline metric, plotted per recipe
    tables: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (caption, ((metric, column title), ...)) per table
    curves: tuple[tuple[str | tuple[str, str], str], ...]  # (metrics.jsonl key or (key, key subtracted), panel title)


MODALITY_GAP = Paper(
    key="modality_gap",
    title="Paper 2, the text-vision modality gap (arXiv 2510.22836)",
    recipes=(
        *(Recipe(name, (f"experiment=modality_gap/{name}",), "kl" if name == "kl_curriculum" else None)
          for name in ("full_text", "no_text", "mix", "curriculum", "kl", "kl_curriculum")),
        # the paper's own regime: GRPO/DAPO from a model that already solves the task from text-centric prompts
        *(Recipe(f"rl_{name}", (f"experiment=modality_gap_rl/{name}",), "full_text", entry="rl")
          for name in ("full_text", "kl")),
        # not a paper recipe: rl_kl without the released clamps, whose k3 bound leaves no gradient on the answer
        # tokens of a vision view that is confidently wrong
        Recipe("rl_kl_unclamped", ("experiment=modality_gap_rl/kl", "rl.align.clamp=false"), "full_text", entry="rl"),
    ),
    evaluate=("builder=paired", "builder.emit=both"),
    imbalance=("builder=paired", "builder.emit=mix", "imbalance.spans=image_text"),  # each view its own instances
    conditions=("text_centric", "vision_centric"),
    gap="modality_gap",
    tables=(
        ("", (
            ("text_centric", "text-centric acc."),
            ("vision_centric", "vision-centric acc."),
            ("modality_gap", "gap (text - vision)"),
            ("imbalance/text_centric", "image share of attention, text-centric"),
        )),
        ("The RL runs (from `metrics.jsonl`; logged steps with full-reward rollouts for the alignment columns)", (
            ("rl/reward_last_fifth", "mean reward, last fifth of the steps"),
            ("rl/aligned_rollouts", "share of rollouts re-scored by the alignment term"),
            ("rl/align_loss", "alignment term (k3, token mean)"),
        )),
    ),
    curves=(
        ("eval/accuracy/text_centric", "held-out accuracy, text-centric"),
        ("eval/accuracy/vision_centric", "held-out accuracy, vision-centric"),
        ("imbalance/ratio", "image share of attention (probe set)"),
        ("lm_loss", "training LM loss"),
    ),
)
# paper 1's runs: the conflict mixture, whole epochs, full fine-tuning (the recipes use LoRA) as every other
# embedded run
MIXING = ("data=conflict_mixture", "finetune=full", "trainer.max_steps=-1")
MODAL_IMBALANCE = Paper(
    key="modal_imbalance",
    title="Paper 1, cross-modal attention imbalance (arXiv 2510.02608)",
    # it: dataset-level mixing, hit: instance-level mixing of the same instructions
    recipes=(
        *(Recipe(name, (f"experiment=modal_imbalance/{name}", *MIXING)) for name in ("it", "hit")),
        # not the paper's comparison (matched data): hit with as many optimizer steps as it (twice the passes)
        Recipe("hit_matched_steps", ("experiment=modal_imbalance/hit", *MIXING), epoch_scale=2.0, default=False),
    ),
    evaluate=("builder=conflict",),
    imbalance=("builder=conflict", "imbalance.spans=evidence"),
    conditions=tuple(f"discrimination/{c}" for c in CONFLICT_CONDITIONS),
    gap="discrimination_gap",
    tables=(
        ("Recognition: the share of conflicts answered \"The sources conflict.\"", (
            *((f"recognition/{c}", f"recognised, {c.replace('_', ' ')}") for c in CONFLICT_CONDITIONS),
            ("false_alarm", "false alarms (controls, all conditions)"),
            ("recognition_gap", "unimodal - cross-modal"),
        )),
        ("Discrimination: recognition less the false-alarm rate on the same condition's controls", (
            *((f"discrimination/{c}", c.replace("_", " ")) for c in CONFLICT_CONDITIONS),
            ("discrimination_gap", "unimodal - cross-modal"),
            ("imbalance/cross_modal", "image share of evidence attention, cross-modal"),
        )),
    ),
    curves=(
        (("eval/conflict_recognition/unimodal_image", "eval/false_conflict/unimodal_image"),
         "held-out discrimination, unimodal image"),
        (("eval/conflict_recognition/cross_modal", "eval/false_conflict/cross_modal"),
         "held-out discrimination, cross-modal"),
        ("imbalance/ratio", "image share of attention (probe set)"),
        ("lm_loss", "training LM loss"),
    ),
)
PAPERS = (MODALITY_GAP, MODAL_IMBALANCE)


@dataclass(frozen=True)
class Run:
    paper: Paper
    recipe: Recipe
    seed: int
    directory: Path

    @property
    def label(self) -> str:
        return f"{self.paper.key}/{self.recipe.name} seed {self.seed}"

    def finished(self) -> bool:
        return (self.directory / "final").is_dir() and (self.directory / "eval" / "eval.json").is_file()

    def span(self) -> tuple[float, float]:
        """(start, end) wall-clock times of a finished run: its job file was written first, eval.json last."""
        return (self.directory / "job.json").stat().st_mtime, (self.directory / "eval" / "eval.json").stat().st_mtime


# The order runs start in: group by group, and within a group seed by seed (the recipes a comparison needs side by
# side); the baselines and the papers' own comparisons first, so an interrupted reproduction reports whole ones.
GROUPS = (("full_text",), ("it", "hit"), ("hit_matched_steps",), ("mix",), ("no_text",), ("kl",),
          ("rl_full_text", "rl_kl", "rl_kl_unclamped"), ("curriculum",), ("kl_curriculum",))
ORDER = tuple(name for group in GROUPS for name in group)
EXTRAS = tuple(recipe.name for paper in PAPERS for recipe in paper.recipes if not recipe.default)


def plan(runs_root: Path, budget: Budget) -> list[Run]:
    runs = [
        Run(paper, recipe, seed, runs_root / paper.key / recipe.name / f"seed{seed}")
        for paper in PAPERS
        for recipe in paper.recipes
        for seed in budget.seeds
    ]
    group = {name: index for index, names in enumerate(GROUPS) for name in names}
    return sorted(runs, key=lambda run: (group[run.recipe.name], run.seed, ORDER.index(run.recipe.name)))


def dependencies(run: Run, runs: list[Run]) -> list[Run]:
    """A recipe that starts from another recipe's model waits for that run (same seed)."""
    return [other for other in runs if other.seed == run.seed and other.paper is run.paper
            and other.recipe.name == run.recipe.starts_from]


# --- running ------------------------------------------------------------------------------------------------------


def steps(run: Run, runs: dict[tuple, Run], budget: Budget) -> list[tuple[str, list[str]]]:
    """(step, overrides) of one run: train (unless final/ exists), then measure imbalance, then evaluate (last, so
    that eval.json marks a finished run). Each step is the entry point's own function on its composed config."""
    base = [f"seed={run.seed}", f"output_dir={run.directory}", *base_model_overrides(budget)]
    planned: list[tuple[str, list[str]]] = []
    final = run.directory / "final"
    if not final.is_dir():
        train = [*base, *run.recipe.overrides, "trainer.save_strategy=no", f"trainer.logging_steps={budget.logging_steps}",
                 f"metrics.eval.per_condition={budget.curve_per_condition}"]
        if run.paper is MODALITY_GAP:
            # in-training evaluation: both views of other records than the final evaluation's
            train += ["metrics=[imbalance,eval_paired]",
                      f"metrics.eval.data_overrides={{seed:{CURVE_DATA_SEED},num_records:{budget.curve_per_condition}}}",
                      f"data.num_records={budget.gap_records}"]
            train_steps = budget.rl_steps if run.recipe.entry == "rl" else budget.gap_steps
            train += [f"trainer.max_steps={train_steps}"]
            every = max(1, train_steps // budget.curve_points)
        else:
            train += ["metrics=[imbalance,eval_conflict]"]
            records = budget.mixing_records
            train += [f"data.sources.{name}.num_records={records}" for name in ("image_qa", "text_qa", "bilingual_qa")]
            train += [f"data.sources.{name}.source.num_records={records}" for name in ("text_conflicts", "image_conflicts")]
            epochs = budget.mixing_epochs * run.recipe.epoch_scale
            train += [f"+trainer.num_train_epochs={epochs}"]  # conf/trainer has no such key
            # dataset-level mixing: 7 x records instructions, one per row of 16 (instance-level: half the steps)
            every = max(1, int(7 * records * epochs / 16) // budget.curve_points)
        train += [f"metrics.imbalance.every_n_steps={every}", f"metrics.eval.every_n_steps={every}"]
        if run.recipe.starts_from:
            train += [f"model.path={runs[(run.paper.key, run.recipe.starts_from, run.seed)].directory / 'final'}"]
        planned.append((run.recipe.entry, train))
    # data=synthetic (the xmodal-eval default) on other records: enough for per_condition items of each condition
    held_out = [*base, f"data.seed={EVAL_DATA_SEED}", f"data.num_records={budget.eval_per_condition}"]
    planned.append(("imbalance", [
        *held_out, *run.paper.imbalance, f"imbalance.checkpoint={final}",
        f"imbalance.per_condition={budget.imbalance_per_condition}", f"imbalance.out_dir={run.directory / 'imbalance'}",
    ]))
    planned.append(("eval", [
        *held_out, *run.paper.evaluate, f"evaluate.checkpoints=[{final}]",
        f"evaluate.per_condition={budget.eval_per_condition}", f"evaluate.out_dir={run.directory / 'eval'}",
    ]))
    return planned


def base_model_overrides(budget: Budget) -> list[str]:
    return [f"model.init.stage.{key}={value}" for key, value in budget.base_stage.items()]


# step -> (the entry point's config name, its module, the function its console script runs)
ENTRY_POINTS = {
    "base": ("config", "xmodal.recipes", "base_model"),  # build and cache the tiny base model (once)
    "train": ("config", "xmodal.recipes.finetune", "train"),  # xmodal-train
    "rl": ("rl", "xmodal.recipes.rl", "train"),  # xmodal-rl
    "imbalance": ("imbalance", "xmodal.recipes.imbalance", "run"),  # xmodal-imbalance
    "eval": ("evaluate", "xmodal.recipes.evaluate", "run"),  # xmodal-eval
}


def execute(directory: Path, planned: list[tuple[str, list[str]]], label: str, cache_dir: str) -> float:
    """Run `planned` steps in one process (`--worker`), one thread, logging to `<directory>/run.log`; returns
    seconds, raises with the log's tail. One process, not one per step: starting Python and torch costs more than
    a quick run's steps."""
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    job = directory / "job.json"
    atomic_write_text(job, json.dumps(planned, indent=1) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "XMODAL_CACHE": cache_dir,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = directory / "run.log"
    with open(log, "w") as handle:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(job)]
        code = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{label}: exited {code} (log: {log})\n{tail}")
    return time.perf_counter() - started


def worker(job: Path) -> None:
    """Run a job's steps in this process, each composed exactly as its console script composes it."""
    import importlib
    import logging

    from hydra import compose, initialize_config_dir

    from xmodal.recipes import CONFIG_DIR

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="[%(asctime)s] %(name)s: %(message)s")
    for step, overrides in json.loads(job.read_text()):
        config_name, module, function = ENTRY_POINTS[step]
        print(f"== {step}: {' '.join(overrides)}", flush=True)
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
        result = getattr(importlib.import_module(module), function)(cfg)
        print(f"== {step}: {result}", flush=True)


def run_all(runs: list[Run], runs_root: Path, budget: Budget, jobs: int, cache_dir: str) -> list[str]:
    """Run every unfinished run, `jobs` at a time, in dependency order; returns the failures' messages."""
    by_key = {(r.paper.key, r.recipe.name, r.seed): r for r in runs}
    todo = [r for r in runs if not r.finished()]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to run, {jobs} at a time", flush=True)
    if todo:  # every run starts from one cached base model (model.init_seed): build it once, before they start
        print("[base] building or finding the cached base model", flush=True)
        try:
            execute(runs_root / "base", [("base", base_model_overrides(budget))], "base model", cache_dir)
        except RuntimeError as error:
            return [str(error)]
    done = {r.label for r in runs if r.finished()}
    failed: dict[str, str] = {}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict = {}
        while todo or running:
            for run in list(todo):
                needs = dependencies(run, runs)
                if any(n.label in failed for n in needs):
                    failed[run.label] = f"{run.label}: skipped, a run it needs failed"
                    todo.remove(run)
                elif len(running) < jobs and all(n.label in done for n in needs):
                    todo.remove(run)
                    print(f"[start] {run.label} -> {run.directory}", flush=True)
                    work = (run.directory, steps(run, by_key, budget), run.label, cache_dir)
                    running[pool.submit(execute, *work)] = run
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run = running.pop(future)
                try:
                    seconds = future.result()
                except RuntimeError as error:
                    failed[run.label] = str(error)
                    print(f"[FAILED] {error}", flush=True)
                    continue
                done.add(run.label)
                elapsed = time.perf_counter() - started
                print(f"[done {len(done)}/{len(runs)}] {run.label} in {seconds:.0f} s ({elapsed / 60:.1f} min so far)",
                      flush=True)
    return list(failed.values())


# --- results ------------------------------------------------------------------------------------------------------


def run_metrics(run: Run) -> dict[str, float]:
    """The numbers of one finished run, from its eval.json and imbalance.json."""
    report = json.loads((run.directory / "eval" / "eval.json").read_text())["results"][0]
    conditions, derived = report["conditions"], report["derived"]
    metrics: dict[str, float] = {}
    imbalance_file = run.directory / "imbalance" / "imbalance.json"
    imbalance = json.loads(imbalance_file.read_text())["results"]["checkpoint"] if imbalance_file.is_file() else {}
    for condition, result in imbalance.items():
        metrics[f"imbalance/{condition}"] = result["aggregate"]["ratio"]
    if run.paper is MODALITY_GAP:
        for condition in MODALITY_GAP.conditions:
            metrics[condition] = conditions[condition]["accuracy"]
        gap = derived["modality_gap"]  # a number, or {"difference", "ci"} where xmodal-eval adds intervals
        metrics["modality_gap"] = gap["difference"] if isinstance(gap, dict) else gap
        metrics["modality_gap_size"] = abs(metrics["modality_gap"])  # a reversed gap is a gap too
        if run.recipe.entry == "rl":
            metrics.update(rl_training_metrics(run.directory / "metrics.jsonl"))
        return metrics
    for condition in CONFLICT_CONDITIONS:
        metrics[f"recognition/{condition}"] = derived[f"conflict_recognition/{condition}"]["accuracy"]
        metrics[f"control_accuracy/{condition}"] = derived[f"control_accuracy/{condition}"]["accuracy"]
        # saying "conflict" to everything recognises every conflict: what tells conflicts apart is the excess
        # over the false-alarm rate on the same condition's controls
        false_alarms = derived[f"false_conflict/{condition}"]["accuracy"]
        metrics[f"discrimination/{condition}"] = metrics[f"recognition/{condition}"] - false_alarms
    alarms = [derived[f"false_conflict/{c}"] for c in CONFLICT_CONDITIONS]
    answers = sum(a.get("answers", a.get("count")) for a in alarms)  # "answers" where items are sampled repeatedly
    metrics["false_alarm"] = sum(a["correct"] for a in alarms) / answers
    for measure in ("recognition", "discrimination"):
        unimodal = (metrics[f"{measure}/unimodal_text"] + metrics[f"{measure}/unimodal_image"]) / 2
        metrics[f"{measure}_gap"] = unimodal - metrics[f"{measure}/cross_modal"]
    return metrics


def rl_training_metrics(metrics_file: Path) -> dict[str, float]:
    """What the RL run did, from its logged steps: the mean reward of its last fifth, and per logged step with
    full-reward rollouts the alignment term's token mean and the share of rollouts it re-scored."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rewards = [row["reward"] for row in rows if "reward" in row]
    metrics = {"rl/reward_last_fifth": statistics.fmean(rewards[-max(1, len(rewards) // 5):])} if rewards else {}
    for key in ("align_loss", "aligned_rollouts"):
        values = [row[key] for row in rows if row.get(key) is not None]
        if values:
            metrics[f"rl/{key}"] = statistics.fmean(values)
    return metrics


def summarise(values: list[float]) -> dict:
    """Mean, sample standard deviation and the 95 % t-interval of the mean over seeds."""
    mean = statistics.fmean(values)
    positive = sum(value > 0 for value in values)
    if len(values) < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": len(values), "positive": positive}
    from scipy.stats import t

    std = statistics.stdev(values)
    half = t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": len(values), "positive": positive}


def collect(runs: list[Run]) -> dict:
    papers: dict = {}
    for paper in PAPERS:  # every finished run of the plan, whichever recipes this invocation ran
        recipes: dict = {}
        for recipe in paper.recipes:
            finished = [r for r in runs if r.paper is paper and r.recipe is recipe and r.finished()]
            per_seed = {str(r.seed): run_metrics(r) for r in finished}  # str: as results.json reads back
            names = sorted({name for metrics in per_seed.values() for name in metrics})
            recipes[recipe.name] = {
                "seeds": per_seed,
                "summary": {name: summarise([m[name] for m in per_seed.values() if name in m]) for name in names},
            }
        papers[paper.key] = {"title": paper.title, "recipes": recipes}
    return papers


def format_value(summary: dict | None) -> str:
    if not summary:
        return "-"
    if summary["std"] is None:
        return f"{summary['mean']:.3f} (n={summary['n']})"
    low, high = summary["ci95"]
    return f"{summary['mean']:.3f} ± {summary['std']:.3f} [{low:.3f}, {high:.3f}]"


def markdown_table(paper: Paper, results: dict) -> str:
    """The paper's tables, one row per recipe: mean ± std over seeds [95 % interval] of each column's metric."""
    tables = []
    for caption, columns in paper.tables:
        header = ["recipe", "seeds", *(title for _, title in columns)]
        rows = [header, ["---"] * len(header)]
        for recipe, entry in results["papers"][paper.key]["recipes"].items():
            summary = entry["summary"]
            if entry["seeds"] and not any(metric in summary for metric, _ in columns):
                continue  # a table of some recipes' metrics (the RL runs'): not the others
            rows.append([recipe, str(len(entry["seeds"])), *(format_value(summary.get(metric)) for metric, _ in columns)])
        table = "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"
        tables.append(f"{caption}\n\n{table}" if caption else table)
    return "\n".join(tables)


def verdicts(results: dict) -> list[str]:
    """Which of the papers' directions appear, read off the intervals (never typed by hand)."""
    papers = results["papers"]

    def sentence(claim: str, summary: dict | None) -> str:
        if not summary or summary["ci95"] is None:
            return f"- {claim}: not enough finished seeds to say."
        low, high = summary["ci95"]
        appears = "appears" if low > 0 else ("is reversed" if high < 0 else "does not appear (the interval contains 0)")
        return (f"- {claim}: {summary['mean']:+.3f} ± {summary['std']:.3f}, 95 % interval [{low:+.3f}, {high:+.3f}], "
                f"positive in {summary['positive']} of {summary['n']} seeds: {appears}.")

    def interval(paper: str, recipe: str, metric: str) -> dict | None:
        return papers[paper]["recipes"].get(recipe, {}).get("summary", {}).get(metric)

    def paired(paper: str, better: str, baseline: str, metric: str) -> dict | None:
        """`metric` of `better` less that of `baseline`, seed by seed (the same seed: the same data and base)."""
        one, other = (papers[paper]["recipes"].get(r, {}).get("seeds", {}) for r in (better, baseline))
        shared = sorted(set(one) & set(other))
        return summarise([one[s][metric] - other[s][metric] for s in shared]) if shared else None

    lines = [sentence("Paper 2, training on text-centric prompts only leaves a modality gap (text - vision accuracy, "
                      "`full_text`)", interval("modality_gap", "full_text", "modality_gap"))]
    for recipe, baseline in (("mix", "full_text"), ("curriculum", "full_text"), ("kl", "full_text"),
                             ("kl_curriculum", "full_text"), ("rl_kl", "rl_full_text"),
                             ("rl_kl_unclamped", "rl_full_text")):
        lines.append(sentence(f"Paper 2, `{recipe}` narrows the gap of `{baseline}` (size of `{baseline}`'s gap less "
                              f"that of `{recipe}`'s, same seeds)",
                              paired("modality_gap", baseline, recipe, "modality_gap_size")))
    lines.append(sentence("Paper 1, conflicts are told from agreement less well across modalities than within one "
                          "(unimodal - cross-modal discrimination: recognition less the same condition's false alarms, "
                          "`it`)", interval("modal_imbalance", "it", "discrimination_gap")))
    lines.append(sentence("Paper 1, the same in recognition alone (unimodal - cross-modal recognition, `it`)",
                          interval("modal_imbalance", "it", "recognition_gap")))
    for recipe in ("hit", "hit_matched_steps"):
        for condition in ("cross_modal", "cross_lingual"):
            lines.append(sentence(f"Paper 1, instance-level mixing (`{recipe}`) tells {condition.replace('_', '-')} "
                                  "conflicts apart better than dataset-level mixing (`it`) (discrimination difference, "
                                  "same seeds)", paired("modal_imbalance", recipe, "it", f"discrimination/{condition}")))
    return lines


# --- plots --------------------------------------------------------------------------------------------------------


def plot_all(runs: list[Run], results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    paths = []
    for paper in PAPERS:
        recipes = results["papers"][paper.key]["recipes"]
        paths.append(_bars(paper, recipes, list(paper.conditions), out / f"{paper.key}_by_condition.png",
                           f"{paper.title}\nheld-out {'discrimination (recognition - false alarms)' if paper is MODAL_IMBALANCE else 'accuracy'} by condition"))
        paths.append(_bars(paper, recipes, [paper.gap], out / f"{paper.key}_gap.png",
                           f"{paper.title}\n{paper.gap.replace('_', ' ')} on held-out records"))
        paths.append(_curves(paper, runs, out / f"{paper.key}_training.png"))
    return paths


def _bars(paper: Paper, recipes: dict, metrics: list[str], path: Path, title: str) -> Path:
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
    axis.set_ylabel("mean over seeds (95 % interval; dots: seeds)")
    if len(metrics) > 1:
        axis.legend(fontsize=8, ncols=min(len(metrics), 5), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    figure.tight_layout()
    return _save(figure, path)


def _curves(paper: Paper, runs: list[Run], path: Path) -> Path:
    """Per recipe, the in-training held-out evaluation, imbalance probe and LM loss over steps (mean over seeds).
    A recipe that starts from another's model is drawn from that model's last step on."""
    import matplotlib.pyplot as plt

    first_steps = {r.directory: _first_step(r, runs) for r in runs if r.paper is paper and r.finished()}
    figure, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    axes = axes.flatten()
    for axis, (key, label) in zip(axes, paper.curves):
        for recipe in paper.recipes:
            curves = [_series(r.directory / "metrics.jsonl", key, first_steps[r.directory]) for r in runs
                      if r.paper is paper and r.recipe is recipe and r.finished()]
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


def _first_step(run: Run, runs: list[Run]) -> int:
    """0, or for a run that fine-tunes another recipe's model, the last step of that model's run."""
    return sum(max(_series(parent.directory / "metrics.jsonl", "step", _first_step(parent, runs)), default=0)
               for parent in dependencies(run, runs))


def _series(metrics_file: Path, key: str | tuple[str, str], first_step: int = 0) -> dict[int, float]:
    if isinstance(key, tuple):  # the difference of two keys, at the steps that log both
        minuend, subtrahend = (_series(metrics_file, k, first_step) for k in key)
        return {step: minuend[step] - subtrahend[step] for step in minuend if step in subtrahend}
    if not metrics_file.is_file():
        return {}
    lines = (json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip())
    return {first_step + line["step"]: line[key] for line in lines if key in line}


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
    return path


# --- README -------------------------------------------------------------------------------------------------------


def readme_section(results: dict) -> str:
    """The README's reproduction section body, entirely from results.json."""
    run = results["run"]
    lines = [
        README_START,
        f"Generated by `{run['command']}` from `{run['results_file']}` (commit `{run['commit']}`, "
        f"{run['finished_runs']} of {run['planned_runs']} runs finished, seeds {', '.join(map(str, run['seeds']))}; "
        f"{run['settings_note']}). The finished runs took {run['span_minutes']:.0f} min of wall-clock time from the "
        f"first start to the last end, {run['jobs']} at a time on {run['cpus']} CPU cores "
        f"(load average {run['load_average']:.1f} when the results were written).{extras_sentence(run)}",
        "",
        "Cells: mean ± standard deviation over seeds [95 % t-interval of the mean]; held-out records "
        f"(`data.seed={EVAL_DATA_SEED}`), {run['eval_per_condition']} items per condition and seed.",
        "",
    ]
    for paper in PAPERS:
        lines += [f"**{paper.title}**", "", markdown_table(paper, results)]
    lines += ["Directions (read off the intervals):", "", *verdicts(results), "", README_END]
    return "\n".join(lines)


def extras_sentence(run: dict) -> str:
    finished = {name: count for name, count in run["extra_finished_runs"].items() if count}
    if not finished:
        return ""
    names = " ".join(finished)
    return (f" The extra ablations, not in the default run (`python scripts/reproduce.py --recipes {names}`): "
            f"{sum(finished.values())} runs finished, {run['extra_span_minutes']:.0f} min more.")


def update_readme(results: dict, readme: Path) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} markers to write between")
    before, rest = text.split(README_START, 1)
    after = rest.split(README_END, 1)[1]
    atomic_write_text(readme, before + readme_section(results) + after)


# --- main ---------------------------------------------------------------------------------------------------------


def run_span_minutes(runs: list[Run]) -> float:
    spans = [run.span() for run in runs if run.finished()]
    return (max(end for _, end in spans) - min(start for start, _ in spans)) / 60 if spans else 0.0


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
    return (result.stdout.strip() or "unknown") + ("+uncommitted changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of every step (minutes, not hours)")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default results/, quick: "
                        "results-quick/)")
    parser.add_argument("--runs", type=Path, default=None, help="run directories (default runs/reproduce[-quick])")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--recipes", nargs="+", choices=ORDER, default=[n for n in ORDER if n not in EXTRAS],
                        help=f"run these recipes (default: all but the extra ablations {', '.join(EXTRAS)}; the "
                        "tables report whatever runs have finished)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="run only these of the budget's seeds")
    parser.add_argument("--cache-dir", default=os.environ.get("XMODAL_CACHE", str(Path.home() / ".cache" / "xmodal")))
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--update-readme", action="store_true", help="only rewrite the README section from "
                        "<out>/results.json")
    parser.add_argument("--report", action="store_true", help="run nothing: write results/ (and, unless --quick, "
                        "the README section) from the runs finished so far")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: run one job.json
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    budget = QUICK if args.quick else FULL
    suffix = "-quick" if args.quick else ""
    out = args.out or REPO / f"results{suffix}"
    runs_root = args.runs or REPO / "runs" / f"reproduce{suffix}"
    if args.update_readme:
        update_readme(json.loads((out / "results.json").read_text()), args.readme)
        return 0

    started = time.perf_counter()
    planned = plan(runs_root, budget)
    # a recipe that starts from another's model brings that recipe along
    wanted = set(args.recipes) | {r.recipe.starts_from for r in planned if r.recipe.name in args.recipes} - {None}
    runs = [run for run in planned if run.recipe.name in wanted and (args.seeds is None or run.seed in args.seeds)]
    failures = [] if args.report else run_all(runs, runs_root, budget, args.jobs, args.cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/reproduce.py" + (" --quick" if args.quick else "")
    results = {
        "run": {
            "command": command,
            "commit": git_commit(),
            "results_file": os.path.relpath(out / "results.json", REPO),
            "quick": args.quick,
            "seeds": list(budget.seeds),
            "planned_runs": sum(r.recipe.default for r in planned),  # the default recipes'
            "finished_runs": sum(r.recipe.default and r.finished() for r in planned),
            "extra_finished_runs": {name: sum(r.recipe.name == name and r.finished() for r in planned) for name in EXTRAS},
            "failures": failures,
            "wall_minutes": (time.perf_counter() - started) / 60,  # this invocation
            # first start to last end of the default recipes' finished runs, and of the extras' (run separately)
            "span_minutes": run_span_minutes([r for r in planned if r.recipe.default]),
            "extra_span_minutes": run_span_minutes([r for r in planned if not r.recipe.default]),
            "load_average": os.getloadavg()[0],
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "eval_per_condition": budget.eval_per_condition,
            "settings_note": f"paper 2: {budget.gap_steps} steps per recipe; paper 1: {budget.mixing_epochs} epochs "
                             "over the same instructions for both mixings",
            "budget": {k: v for k, v in vars(budget).items()},
        },
        "papers": collect(planned),
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    for paper in PAPERS:
        atomic_write_text(out / f"{paper.key}.md", f"# {paper.title}\n\n{markdown_table(paper, results)}")
    for path in plot_all(planned, results, out):
        print(f"plot: {path}", flush=True)
    if not args.quick:
        update_readme(results, args.readme)
    print(f"results: {out / 'results.json'} ({results['run']['wall_minutes']:.1f} min)", flush=True)
    for failure in failures:
        print(f"[FAILED] {failure.splitlines()[0]}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
