"""Data loading at corpus scale: time to the first optimizer step, peak memory, and whether data keeps up.

Generates a LLaVA-format corpus (`conversations` + `image`, `--images` distinct small PNGs shared by the records)
of each size in `--records`, then trains the tiny LLaVA on it for `--steps` steps through each data path, every
run in a fresh process with a cold cache:

    today       data=llava_instruct: every record in a Python list, every image opened on load, one-process tokenization
    map         data=messages data.layout=sharegpt: records prepared into Arrow (data.num_proc), tokenized from it
    streaming   data=messages data.layout=sharegpt data.streaming=true: records read, checked and tokenized as trained

For each run it reports the seconds from the start of data preparation to the end of the first optimizer step
(cold cache, and again warm: a restart, or a rank that reads the main process's prepared cache),
the process's peak RSS, the trainer's consumption (samples/s over the steps after the first) and the collator's
rate on the same dataset and batch size (samples/s of reading rows, streamed ones converted and tokenized on the
way, and collating them, alone, after a first batch), and their ratio (data keeps up when it is >= 10).
Below the table, per path, the ratio of peak RSS and of first-step time between the largest and smallest corpus.

    python scripts/bench_data.py --records 10000 100000              # the issue's sizes (665000 on request)
    python scripts/bench_data.py --records 10000 --paths map streaming --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = {
    "today": ["data=llava_instruct"],
    "map": ["data=messages", "data.layout=sharegpt"],
    "streaming": ["data=messages", "data.layout=sharegpt", "data.streaming=true"],
}
COLLATED_BATCHES = 20  # batches timed for the collator's rate
COLOURS = [(r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000], help="corpus sizes")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--images", type=int, default=256, help="distinct images in the corpus")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-proc", type=int, default=2, help="data.num_proc and encoding.num_proc (new paths)")
    parser.add_argument("--workdir", default=None, help="keep the corpora and caches here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # one run, in a child process
    return parser.parse_args(argv)


def write_corpus(folder: Path, records: int, images: int, image_size: int) -> Path:
    """`records` LLaVA records over `images` distinct PNGs; written once per size."""
    from PIL import Image

    corpus = folder / f"llava-{records}.json"
    if corpus.exists():
        return corpus
    image_folder = folder / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    for index in range(images):
        path = image_folder / f"{index}.png"
        if not path.exists():
            Image.new("RGB", (image_size, image_size), COLOURS[index % len(COLOURS)]).save(path)
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.write("[")
        for index in range(records):
            colour = COLOURS[index % images % len(COLOURS)]
            record = {
                "id": str(index),
                "image": f"{index % images}.png",
                "conversations": [
                    {"from": "human", "value": f"<image>\nRecord {index}: what colour fills the image?"},
                    {"from": "gpt", "value": "rgb({}, {}, {})".format(*colour)},
                ],
            }
            handle.write(("," if index else "") + json.dumps(record))
        handle.write("]")
    return corpus


def run_one(spec: dict) -> dict:
    """Train through one data path in this process; the parent reads the JSON line it prints."""
    import torch
    from transformers import TrainerCallback

    from xmodal.data_builders.collate import MultimodalCollator
    from xmodal.losses.registry import build_loss
    from xmodal.recipes import CONFIG_DIR, base_model
    from xmodal.recipes.finetune import build_train_dataset
    from xmodal.trainers.lifecycle.runs import build_training_args, load_training_model
    from xmodal.trainers.models import load_processor
    from xmodal.trainers.sft import XModalSFTTrainer
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=spec["overrides"])
    torch.manual_seed(0)
    base = base_model(cfg)  # built before the clock starts: the model is not what is measured
    processor = load_processor(base, False)
    model = load_training_model(cfg.model, cfg.finetune, base)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.monotonic())

    started = time.monotonic()
    dataset, built = build_train_dataset(cfg, processor)
    prepared = time.monotonic()
    clock = StepClock()
    collator = MultimodalCollator(processor)
    trainer = XModalSFTTrainer(
        model=model, args=build_training_args(cfg.trainer, cfg.deepspeed), train_dataset=dataset, data_collator=collator,
        processing_class=processor, callbacks=[clock], loss_composer=build_loss(cfg.loss),
    )
    trainer.train()
    batch, steps = cfg.trainer.per_device_train_batch_size, len(clock.ends)
    trainer_rate = batch * (steps - 1) / (clock.ends[-1] - clock.ends[0])

    # Steady state, as the trainer sees it after its first batch (a stream fills its shuffle buffer first).
    rows = iter(dataset)
    collator([next(rows) for _ in range(batch)])
    collate_started = time.monotonic()
    for _ in range(COLLATED_BATCHES):
        collator([next(rows) for _ in range(batch)])
    collator_rate = batch * COLLATED_BATCHES / (time.monotonic() - collate_started)
    return {
        "prepare_s": prepared - started,
        "first_step_s": clock.ends[0] - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainer_samples_per_s": trainer_rate,
        "collator_samples_per_s": collator_rate,
        "collator_over_trainer": collator_rate / trainer_rate,
        "skipped_records": sum(built.source.skipped.values()),
    }


def overrides(path: str, corpus: Path, workdir: Path, args) -> list[str]:
    cache = workdir / f"cache-{path}-{corpus.stem}"
    return [
        *PATHS[path], f"data.path={corpus}", f"data.image_folder={corpus.parent / 'images'}",
        *([f"data.num_proc={args.num_proc}", f"encoding.num_proc={args.num_proc}"] if path != "today" else []),
        "model=tiny_llava", f"cache_dir={cache}", f"output_dir={workdir / 'runs' / f'{path}-{corpus.stem}'}",
        f"trainer.max_steps={args.steps}", f"trainer.per_device_train_batch_size={args.batch}",
        "trainer.save_strategy=no", f"trainer.logging_steps={args.steps}", "trainer.report_to=[]",
    ]


def run_child(spec: dict) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run(
        [sys.executable, __file__, "--run", json.dumps(spec)], env=env, capture_output=True, text=True
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{spec['path']} at {spec['records']} records failed:\n{result.stderr[-4000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.run:
        print(json.dumps(run_one(json.loads(args.run))))
        return
    with tempfile.TemporaryDirectory(prefix="xmodal-bench-data-") as scratch:
        workdir = Path(args.workdir or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        results = []
        for records in args.records:
            corpus = write_corpus(workdir, records, args.images, args.image_size)
            for path in args.paths:
                spec = {"path": path, "records": records, "overrides": overrides(path, corpus, workdir, args)}
                cold = run_child(spec)
                warm = run_child(spec)  # the same cache: what a restart (or another rank) pays
                results.append({"path": path, "records": records, **cold, "warm_first_step_s": warm["first_step_s"]})
                print_row(results[-1], header=len(results) == 1)
    print_ratios(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")


def print_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'path':<10}{'records':>9}{'prepare s':>11}{'1st step s':>12}{'warm 1st':>10}{'peak RSS MB':>13}"
              f"{'trainer/s':>11}{'collator/s':>12}{'collator/trainer':>18}", flush=True)
    print(f"{row['path']:<10}{row['records']:>9}{row['prepare_s']:>11.1f}{row['first_step_s']:>12.1f}"
          f"{row['warm_first_step_s']:>10.1f}"
          f"{row['peak_rss_mb']:>13.0f}{row['trainer_samples_per_s']:>11.1f}{row['collator_samples_per_s']:>12.1f}"
          f"{row['collator_over_trainer']:>18.1f}", flush=True)


def print_ratios(results: list[dict], args) -> None:
    """Largest over smallest corpus, per path: memory and first-step growth with the corpus."""
    smallest, largest = min(args.records), max(args.records)
    if smallest == largest:
        return
    for path in args.paths:
        by_size = {row["records"]: row for row in results if row["path"] == path}
        rss = by_size[largest]["peak_rss_mb"] / by_size[smallest]["peak_rss_mb"]
        first = by_size[largest]["first_step_s"] / by_size[smallest]["first_step_s"]
        print(f"{path}: {largest} vs {smallest} records: peak RSS x{rss:.2f}, first step x{first:.2f}")


if __name__ == "__main__":
    main()
