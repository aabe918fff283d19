"""Running the plan: each run's steps (train, imbalance in both modes, the held-out overlap, evaluation) in one of
`jobs` long-lived worker processes, in dependency order; and archiving each finished run's files under `<out>/runs/`
so that the report needs nothing else."""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from xmodal.core.atomic import atomic_file, atomic_write_text

from .papers import CURVE_DATA_SEED, EVAL_DATA_SEED, MODALITY_GAP, Budget, Run, dependencies

REPO = Path(__file__).resolve().parents[2]
UNCERTAIN = (0.3, 0.7)  # the pre-registered band of "uncertain" vision-centric accuracy for the RL start
VISION_CURVE = "eval/accuracy/vision_centric"
IMBALANCE_MODES = {"imbalance": "weight", "imbalance_norm": "norm"}  # output folder -> imbalance.mode
# the files the tables and plots come from, per run: (path in the run directory, archived name)
ARCHIVED = (
    ("eval/eval.json", "eval.json"),
    ("eval/predictions.jsonl", "predictions.jsonl.gz"),
    ("eval_proxy/predictions.jsonl", "proxy_predictions.jsonl.gz"),
    ("imbalance/imbalance.json", "imbalance.json"),
    ("imbalance_norm/imbalance.json", "imbalance_norm.json"),
    ("metrics.jsonl", "metrics.jsonl.gz"),
    ("overlap.json", "overlap.json"),
    ("commit.txt", "commit.txt"),
    ("start.json", "start.json"),
)


def base_model_overrides(budget: Budget) -> list[str]:
    return [f"model.init.stage.{key}={value}" for key, value in budget.base_stage.items()]


def training_overrides(run: Run, runs: dict[tuple, Run], budget: Budget) -> list[str]:
    """The overrides of the run's training step (also what the overlap step rebuilds its training data from)."""
    # resume=auto: a run the reproduction was killed in continues from its newest checkpoint, or begins afresh
    train = [f"seed={run.seed}", f"output_dir={run.directory}", "resume=auto", *base_model_overrides(budget),
             *run.recipe.overrides,
             f"trainer.logging_steps={budget.logging_steps}",
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
    if any(other.starts_from == run.recipe.name and other.uncertain_start for other in run.paper.recipes):
        # a later recipe starts from one of these steps: keep the model at every in-training evaluation
        train += ["trainer.save_strategy=steps", f"trainer.save_steps={every}", "trainer.save_total_limit=null"]
    else:
        train += ["trainer.save_strategy=no"]
    if run.recipe.starts_from:
        parent = runs[(run.paper.key, run.recipe.starts_from, run.seed)].directory
        start = uncertain_start(parent, run.directory) if run.recipe.uncertain_start else parent / "final"
        train += [f"model.path={start}"]
    return train


def uncertain_start(parent: Path, directory: Path) -> Path:
    """The pre-registered start of an RL run: of the parent run's saved steps, the first whose in-training
    vision-centric accuracy lies in UNCERTAIN, else the one closest to 0.5 (the earlier on a tie); recorded in
    `<directory>/start.json`. Before the parent has run (a dry plan): its final/."""
    metrics = parent / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    saved = [(row["step"], row[VISION_CURVE]) for row in rows
             if VISION_CURVE in row and (parent / f"checkpoint-{row['step']}").is_dir()]
    if not saved:
        return parent / "final"
    inside = [(step, accuracy) for step, accuracy in saved if UNCERTAIN[0] <= accuracy <= UNCERTAIN[1]]
    step, accuracy = inside[0] if inside else min(saved, key=lambda item: (abs(item[1] - 0.5), item[0]))
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "start.json", json.dumps(
        {"step": step, "vision_centric_accuracy": accuracy, "inside_band": bool(inside)}) + "\n")
    return parent / f"checkpoint-{step}"


def steps(run: Run, runs: dict[tuple, Run], budget: Budget) -> list[tuple[str, object]]:
    """(step, payload) of one run: train (unless final/ exists), measure imbalance in both modes, list the held-out
    records whose content a training record shares, then evaluate (last, so that eval.json marks a finished run).
    Each entry-point step is the entry point's own function on its composed config."""
    base = [f"seed={run.seed}", f"output_dir={run.directory}", *base_model_overrides(budget)]
    train = training_overrides(run, runs, budget)
    final = run.directory / "final"
    planned: list[tuple[str, object]] = [] if final.is_dir() else [(run.recipe.entry, train)]
    # data=synthetic (the xmodal-eval default) on other records: enough for per_condition items of each condition
    held_out = [*base, f"data.seed={EVAL_DATA_SEED}", f"data.num_records={budget.eval_per_condition}"]
    for folder, mode in IMBALANCE_MODES.items():
        planned.append(("imbalance", [
            *held_out, *run.paper.imbalance, f"imbalance.checkpoint={final}", f"imbalance.mode={mode}",
            f"imbalance.per_condition={budget.imbalance_per_condition}", f"imbalance.out_dir={run.directory / folder}",
        ]))
    evaluations = {folder: [*held_out, *builder, f"evaluate.checkpoints=[{final}]",
                            f"evaluate.per_condition={budget.eval_per_condition}",
                            f"evaluate.out_dir={run.directory / folder}"]
                   for folder, builder in (("eval_proxy", run.paper.proxy), ("eval", run.paper.evaluate)) if builder}
    training_config = "rl" if run.recipe.entry == "rl" else "config"
    planned.append(("overlap", {"training": [training_config, train], "held_out": list(evaluations.values()),
                                "out": str(run.directory / "overlap.json")}))
    planned += [("eval", overrides) for overrides in evaluations.values()]  # eval/ last: it marks a finished run
    return planned


# step -> (the entry point's config name, its module, the function its console script runs)
ENTRY_POINTS = {
    "base": ("config", "xmodal.recipes", "base_model"),  # build and cache the tiny base model (once)
    "train": ("config", "xmodal.recipes.finetune", "train"),  # xmodal-train
    "rl": ("rl", "xmodal.recipes.rl", "train"),  # xmodal-rl
    "imbalance": ("imbalance", "xmodal.recipes.imbalance", "run"),  # xmodal-imbalance
    "eval": ("evaluate", "xmodal.recipes.evaluate", "run"),  # xmodal-eval
}


def worker_environment(cache_dir: str) -> dict[str, str]:
    """One thread per worker (`jobs` workers share the cores), the run's cache, this checkout importable."""
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "XMODAL_CACHE": cache_dir,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def start_worker(environment: dict[str, str]) -> None:
    """A pool process's set-up, before any run: its environment and one torch thread."""
    os.environ.update(environment)
    import torch

    torch.set_num_threads(1)


def worker_pool(jobs: int, cache_dir: str) -> ProcessPoolExecutor:
    """`jobs` processes that each run one run after another: Python, torch and transformers start once per process
    instead of once per run (most of a quick run's time). Spawned, not forked: the orchestrator has threads."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=start_worker, initargs=(worker_environment(cache_dir),))


def prepare(directory: Path, planned: list) -> Path:
    """The run's job file (its steps) and, the first time, the commit it trains at; returns the job file."""
    directory.mkdir(parents=True, exist_ok=True)
    job = directory / "job.json"
    atomic_write_text(job, json.dumps(planned, indent=1) + "\n")
    if not (directory / "commit.txt").is_file():  # the code the run trains at (a resumed run keeps its first)
        atomic_write_text(directory / "commit.txt", git_commit() + "\n")
    return job


def run_job(job: Path, log: Path) -> float:
    """In a pool process: the job's steps, everything they print (the libraries' C-level output included) in `log`,
    the process's environment as it was afterwards; returns seconds. Raises RuntimeError (a type every process can
    unpickle) with the error's first line; the traceback is in the log."""
    started = time.perf_counter()
    environment = dict(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w", buffering=1) as handle, redirect_stdout(handle), redirect_stderr(handle):
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            worker(job)
        except Exception as error:
            traceback.print_exc()
            raise RuntimeError(f"{type(error).__name__}: {error}".splitlines()[0]) from None
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            os.environ.clear()
            os.environ.update(environment)
    return time.perf_counter() - started


def failure(label: str, log: Path, error: BaseException) -> str:
    """What a failed run reports: its label, the error, the log's tail."""
    tail = "".join(log.read_text().splitlines(keepends=True)[-25:]) if log.is_file() else ""
    return f"{label}: {error} (log: {log})\n{tail}"


def compose_config(config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from xmodal.recipes import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def worker(job: Path) -> None:
    """Run a job's steps in this process, each composed exactly as its console script composes it."""
    import importlib
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="[%(asctime)s] %(name)s: %(message)s",
                        force=True)
    for step, payload in json.loads(job.read_text()):
        print(f"== {step}: {payload}", flush=True)
        if step == "overlap":
            result = write_overlap(payload)
        else:
            config_name, module, function = ENTRY_POINTS[step]
            result = getattr(importlib.import_module(module), function)(compose_config(config_name, payload))
        print(f"== {step}: {result}", flush=True)


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True)
    return (result.stdout.strip() or "unknown") + ("+uncommitted changes" if dirty.stdout.strip() else "")


# --- held-out records that a training record shares ---------------------------------------------------------------


def built_instances(cfg) -> tuple[list[dict], list[dict]]:
    """(source records, built instances) of a composed config's data and builder, built with its seed."""
    from hydra.utils import instantiate

    source = instantiate(cfg.data)
    return list(source.records()), instantiate(cfg.builder).build(source, seed=cfg.seed)


def user_turns(sample: dict, image_digest) -> list[str]:
    """One content key per user turn: its text parts and the digests of its images, in order."""
    images = iter(sample.get("images", []))
    keys = []
    for msg in sample["messages"]:
        if msg["role"] != "user":
            continue
        pieces = [part.get("text", "") if part["type"] == "text" else f"<image {image_digest(next(images))}>"
                  for part in msg["content"]]
        keys.append("".join(pieces))
    return keys


def write_overlap(payload: dict) -> str:
    """Which held-out records (the unit the statistics resample) share a user turn, word for word and pixel for
    pixel, with any training record or training instance of the run; written to `payload["out"]`."""
    digests: dict[str, str] = {}

    def image_digest(path: str) -> str:
        if path not in digests:
            digests[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return digests[path]

    config_name, training = payload["training"]
    records, instances = built_instances(compose_config(config_name, training))
    seen = {key for sample in (*records, *instances) for key in user_turns(sample, image_digest)}
    held_out = [instance for overrides in payload["held_out"]
                for instance in built_instances(compose_config("evaluate", overrides))[1]]
    by_record: dict[str, bool] = {}
    for instance in held_out:
        meta = instance.get("meta") or {}
        record = str(meta.get("pair_id") or meta.get("record_id") or instance["id"])  # as xmodal-eval groups items
        views = [instance, *([instance["teacher"]] if instance.get("teacher") else [])]
        shared = any(key in seen for view in views for key in user_turns(view, image_digest))
        by_record[record] = by_record.get(record, False) or shared
    overlapping = sorted(record for record, shared in by_record.items() if shared)
    atomic_write_text(Path(payload["out"]), json.dumps(
        {"held_out_records": len(by_record), "overlapping_records": overlapping}, indent=1) + "\n")
    return f"{len(overlapping)} of {len(by_record)} held-out records share content with training"


# --- the plan -------------------------------------------------------------------------------------------------------


def run_all(runs: list[Run], runs_root: Path, budget: Budget, jobs: int, cache_dir: str) -> list[str]:
    """Run every unfinished run, `jobs` at a time, in dependency order; returns the failures' messages."""
    by_key = {(r.paper.key, r.recipe.name, r.seed): r for r in runs}
    todo = [r for r in runs if not r.finished()]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to run, {jobs} at a time", flush=True)
    done = {r.label for r in runs if r.finished()}
    failed: dict[str, str] = {}
    started = time.perf_counter()
    pool = worker_pool(jobs, cache_dir)
    try:
        if todo:  # every run starts from one cached base model (model.init_seed): build it once, before they start
            print("[base] building or finding the cached base model", flush=True)
            base = runs_root / "base"
            try:
                pool.submit(run_job, prepare(base, [("base", base_model_overrides(budget))]), base / "run.log").result()
            except (RuntimeError, BrokenProcessPool) as error:
                return [failure("base model", base / "run.log", error)]
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
                    job = prepare(run.directory, steps(run, by_key, budget))
                    running[pool.submit(run_job, job, run.directory / "run.log")] = run
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run = running.pop(future)
                try:
                    seconds = future.result()
                except (RuntimeError, BrokenProcessPool) as error:
                    failed[run.label] = failure(run.label, run.directory / "run.log", error)
                    print(f"[FAILED] {failed[run.label]}", flush=True)
                    if isinstance(error, BrokenProcessPool):  # a worker died (killed, out of memory): new workers
                        pool.shutdown(cancel_futures=True)
                        pool = worker_pool(jobs, cache_dir)
                    continue
                done.add(run.label)
                elapsed = time.perf_counter() - started
                print(f"[done {len(done)}/{len(runs)}] {run.label} in {seconds:.0f} s ({elapsed / 60:.1f} min so far)",
                      flush=True)
    finally:
        pool.shutdown(cancel_futures=True)
    return list(failed.values())


def archive(run: Run, archive_root: Path) -> None:
    """Copy a finished run's per-run files to `<archive_root>/<paper>/<recipe>/seed<N>/` (the large ones
    gzip-compressed, with a fixed timestamp so that a rerun leaves identical bytes), plus its span in time."""
    target = archive_root / run.key
    target.mkdir(parents=True, exist_ok=True)
    for relative, name in ARCHIVED:
        source = run.directory / relative
        if not source.is_file():
            continue
        with atomic_file(target / name, "wb") as handle:
            if name.endswith(".gz"):
                with gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) as packed, open(source, "rb") as raw:
                    shutil.copyfileobj(raw, packed)
            else:
                handle.write(source.read_bytes())
    start, end = run.span()
    atomic_write_text(target / "span.json", json.dumps({"start": start, "end": end}) + "\n")
