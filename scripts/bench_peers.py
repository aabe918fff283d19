"""xmodal-train against a plain HF `Trainer` and TRL's `SFTTrainer` on the same work, as a new user would run them.

Same checkpoint (a tiny LLaVA built from its config and saved, with its processor), same data (records written
by `xmodal-data`, converted to LLaVA JSON, which each framework reads its own way), same batch, steps,
optimizer settings and trainable parameters (full fine-tune, vision tower frozen), one CPU thread each. Each
run is a fresh process; the frameworks alternate within every repetition (the order rotates), and a run's
speed is samples / the Trainer's own `train_runtime` (the training loop, data loading and collation
included; model loading and xmodal's cached tokenization excluded). Printed: median samples/s per framework
and the medians of the per-repetition ratios xmodal/HF and xmodal/TRL, as a table and as JSON.

Two configs: `tiny` (conf/model/tiny_llava.yaml's sizes, 64 px images: 16 image tokens) where framework
overhead dominates, and `real` (the real shape of Qwen2.5-VL training: a 151,936-token vocabulary and
~1,000-token prompts, 1,024 of them image tokens, short answers; the rest of the model tiny).
Peers: `pip install .[bench]` (TRL). Targets: xmodal/HF >= 1.0, xmodal/TRL >= 1.5 at both configs.

    python scripts/bench_peers.py                                 # both configs, 3 repetitions (a few minutes)
    python scripts/bench_peers.py --configs tiny --repeats 5 --json peers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from xmodal.core.atomic import atomic_write_text

FRAMEWORKS = ("xmodal", "hf", "trl")
# The optimizer and schedule of conf/trainer/default.yaml, given to every framework.
TRAINING = {
    "learning_rate": 1.0e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 2,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "seed": 42,
    "bf16": False,  # TRL's SFTConfig defaults to bf16, which these CPU runs (and xmodal's default) do not use
}
TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2}
VISION = {"hidden_size": 128, "intermediate_size": 256, "num_layers": 3, "num_heads": 4}
CONFIGS = {
    # name: (model sizes, vocabulary or None for the tokenizer's own, batch, steps)
    "tiny": ({"text": TEXT, "vision": {**VISION, "image_size": 64, "patch_size": 16}}, None, 16, 30),
    "real": (
        {"text": {**TEXT, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2},
         "vision": {**VISION, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "image_size": 128, "patch_size": 4}},
        151_936,
        1,
        2,
    ),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3, help="runs per framework and config (median taken)")
    parser.add_argument("--records", type=int, default=400, help="synthetic records written by xmodal-data")
    parser.add_argument("--steps", type=int, default=None, help="override every config's optimizer steps")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (OMP_NUM_THREADS)")
    parser.add_argument("--workdir", default=None, help="checkpoints, data and run folders (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results here")
    # Internal: one peer run in its own process (the driver calls this).
    parser.add_argument("--run-peer", choices=["hf", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--peer-args", help=argparse.SUPPRESS)
    return parser.parse_args()


# -- setup: one checkpoint and one LLaVA JSON file per config ------------------------------------------------
def build_checkpoint(config: str, folder: Path) -> Path:
    import torch

    from xmodal.trainers.models.tiny import build_tiny_llava

    sizes, vocab, _, _ = CONFIGS[config]
    torch.manual_seed(0)
    model, processor = build_tiny_llava(**sizes)
    if vocab:
        model.resize_token_embeddings(vocab, mean_resizing=False)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_llava_json(records: int, folder: Path, env: dict) -> tuple[Path, Path]:
    """`xmodal-data` writes synthetic records (and their images); they are rewritten as LLaVA-Instruct JSON."""
    jsonl = folder / "records.jsonl"
    run([sys.executable, "-m", "xmodal.recipes.data", "data=synthetic", f"data.num_records={records}", f"out={jsonl}"], env)
    llava = []
    for line in jsonl.read_text().splitlines():
        record = json.loads(line)
        conversations = []
        for message in record["messages"]:
            value = "".join("<image>\n" if part["type"] == "image" else part["text"] for part in message["content"])
            conversations.append({"from": "human" if message["role"] == "user" else "gpt", "value": value})
        llava.append({"id": record["id"], "image": [Path(p).name for p in record["images"]], "conversations": conversations})
    path = folder / "records.json"
    path.write_text(json.dumps(llava))
    return path, folder / "records_images"


# -- the three runs -------------------------------------------------------------------------------------
def xmodal_run(checkpoint: Path, data: Path, images: Path, output: Path, batch: int, steps: int, env: dict) -> float:
    trainer = {**TRAINING, "max_steps": steps, "per_device_train_batch_size": batch, "logging_steps": steps}
    run(
        [
            sys.executable, "-m", "xmodal.recipes.finetune", "model=tiny_llava", f"model.path={checkpoint}",
            "data=llava_instruct", f"data.path={data}", f"data.image_folder={images}", "encoding.max_length=4096",
            "trainer.save_strategy=no", f"output_dir={output}", *[f"trainer.{k}={v}" for k, v in trainer.items()],
        ],
        env,
    )
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return next(line["train_runtime"] for line in lines if "train_runtime" in line)


def peer_run(framework: str, checkpoint: Path, data: Path, images: Path, output: Path, batch: int, steps: int, env) -> float:
    spec = dict(checkpoint=str(checkpoint), data=str(data), images=str(images), output=str(output), batch=batch, steps=steps)
    result = run([sys.executable, __file__, "--run-peer", framework, "--peer-args", json.dumps(spec)], env)
    return json.loads(result.stdout.strip().splitlines()[-1])["train_runtime"]


def llava_messages(record: dict) -> list[dict]:
    """A LLaVA JSON conversation as chat messages with typed parts (what a user writes for a processor)."""
    messages = []
    for turn in record["conversations"]:
        parts = []
        for index, text in enumerate(turn["value"].split("<image>\n")):
            if index:
                parts.append({"type": "image"})
            if text:
                parts.append({"type": "text", "text": text})
        messages.append({"role": "user" if turn["from"] == "human" else "assistant", "content": parts})
    return messages


def train_peer(framework: str, spec: dict) -> None:
    """One peer run: the user's few lines for that framework, then print {"train_runtime": ...}."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments

    from xmodal.trainers.models.finetuning import FinetuneSettings, apply_finetuning

    processor = AutoProcessor.from_pretrained(spec["checkpoint"])
    model = AutoModelForImageTextToText.from_pretrained(spec["checkpoint"], dtype=torch.float32)
    model = apply_finetuning(model, FinetuneSettings())  # xmodal's default: full, vision tower frozen
    records = json.loads(Path(spec["data"]).read_text())
    common = dict(
        output_dir=spec["output"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch"],
        logging_steps=spec["steps"], save_strategy="no", report_to="none", dataloader_num_workers=0, **TRAINING,
    )
    if framework == "hf":
        image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)

        def collate(batch):
            texts = [processor.apply_chat_template(llava_messages(r), tokenize=False) for r in batch]
            images = [Image.open(Path(spec["images"]) / name).convert("RGB") for r in batch for name in r["image"]]
            inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
            labels = inputs["input_ids"].clone()
            labels[(inputs["attention_mask"] == 0) | (labels == image_token)] = -100
            return {**inputs, "labels": labels}

        args = TrainingArguments(**common, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=records, data_collator=collate)
    else:
        from datasets import Dataset, Image as ImageFeature, Sequence
        from trl import SFTConfig, SFTTrainer

        rows = []
        for record in records:
            messages = llava_messages(record)
            images = [str(Path(spec["images"]) / name) for name in record["image"]]
            rows.append({"prompt": messages[:-1], "completion": messages[-1:], "images": images})
        dataset = Dataset.from_list(rows).cast_column("images", Sequence(ImageFeature()))
        trainer = SFTTrainer(
            model=model, args=SFTConfig(**common, max_length=None), train_dataset=dataset, processing_class=processor
        )
    metrics = trainer.train().metrics
    print(json.dumps({"train_runtime": metrics["train_runtime"]}))


def run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


# -- driver ---------------------------------------------------------------------------------------------
def bench_config(config: str, args, workdir: Path, env: dict) -> dict:
    _, _, batch, steps = CONFIGS[config]
    steps = args.steps or steps
    folder = workdir / config
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = build_checkpoint(config, folder / "model")
    data, images = write_llava_json(args.records, folder, env)
    runtimes = {framework: [] for framework in FRAMEWORKS}
    for repeat in range(args.repeats):
        order = FRAMEWORKS[repeat % 3 :] + FRAMEWORKS[: repeat % 3]
        for framework in order:
            output = folder / f"{framework}-{repeat}"
            if framework == "xmodal":
                seconds = xmodal_run(checkpoint, data, images, output, batch, steps, env)
            else:
                seconds = peer_run(framework, checkpoint, data, images, output, batch, steps, env)
            runtimes[framework].append(seconds)
            print(f"  {config} repetition {repeat} {framework}: {batch * steps / seconds:.3g} samples/s", flush=True)
    speed = {f: [batch * steps / s for s in runtimes[f]] for f in FRAMEWORKS}
    return {
        "config": config,
        "batch": batch,
        "steps": steps,
        "samples_per_s": {f: statistics.median(speed[f]) for f in FRAMEWORKS},
        "xmodal_vs_hf": statistics.median(x / h for x, h in zip(speed["xmodal"], speed["hf"])),
        "xmodal_vs_trl": statistics.median(x / t for x, t in zip(speed["xmodal"], speed["trl"])),
        "repetitions": args.repeats,
    }


def main() -> None:
    args = parse_args()
    if args.run_peer:
        train_peer(args.run_peer, json.loads(args.peer_args))
        return
    if args.workdir:
        report = bench(args, Path(args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="xmodal-bench-peers-") as workdir:
            report = bench(args, Path(workdir))
    print(json.dumps(report))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")


def bench(args, workdir: Path) -> dict:
    """Every config's runs under `workdir`; prints the table and returns the report."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
        "XMODAL_CACHE": str(workdir / "cache"),
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    results = [bench_config(config, args, workdir, env) for config in args.configs]
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores visible, {args.threads} thread(s) per run"
    print(f"\nmachine: {machine}")
    print(f"{'config':<8}{'batch':>6}{'steps':>6}{'xmodal/s':>10}{'HF/s':>8}{'TRL/s':>8}{'xmodal/HF':>11}{'xmodal/TRL':>12}")
    for r in results:
        s = r["samples_per_s"]
        print(f"{r['config']:<8}{r['batch']:>6}{r['steps']:>6}{s['xmodal']:>10.3g}{s['hf']:>8.3g}{s['trl']:>8.3g}"
              f"{r['xmodal_vs_hf']:>11.2f}{r['xmodal_vs_trl']:>12.2f}")
    return {"machine": machine, "results": results}


if __name__ == "__main__":
    main()
