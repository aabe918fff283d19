"""Logits only at the targets (the trainer's default) against logits at every position, in one run.

The shape that matters is real: a Qwen2.5-VL-sized vocabulary (151,936) and ~1,000-token prompts, mostly image
tokens, with short answers; the rest of the model is tiny so that the output head's share shows as it does at
scale. For each loss config both paths take full training steps (forward through `xmodal.trainers.sft.loss_context`,
the composed loss, backward, AdamW) in rotation, one step each per round. Reported per loss, medians over rounds:
step time, the peak memory of a step above what was resident before it (weights, optimizer state, batch; the
process's resident-set high-water mark, reset before each step), and the largest loss difference between the
two paths (the learning rate is 0, so every step sees the same weights). Targets: >= 1.3x step speed and
<= 0.3x peak step memory.

    python scripts/bench_logits.py                           # lm and lm_kl (token k3), lm_full_kl; 1 pair
    python scripts/bench_logits.py --losses lm_kl --pairs 2 --json logits.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics

import torch

from bench_alignment import compose_config, paired_batch, train_step
from xmodal.core.atomic import atomic_write_text
from xmodal.losses import build_loss
from xmodal.trainers.models.tiny import build_tiny_llava

PATHS = {"full logits": True, "target logits": False}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", nargs="+", default=["lm", "lm_kl", "lm_full_kl"], help="conf/loss configs")
    parser.add_argument("--vocab", type=int, default=151_936, help="LM vocabulary (Qwen2.5-VL: 151,936)")
    parser.add_argument("--hidden", type=int, default=64, help="LM hidden size")
    parser.add_argument("--image-size", type=int, default=112, help="with --patch-size 4: 784 image tokens")
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=1, help="B: the batch holds B student + B teacher rows")
    parser.add_argument("--prompt-tokens", type=int, default=150, help="text tokens of the student prompt")
    parser.add_argument("--facts-tokens", type=int, default=50, help="extra text tokens of the teacher prompt")
    parser.add_argument("--response-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (one step per variant each)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser.parse_args()


def build_model(args):
    """Tiny LLaVA (2-layer Llama, 1-layer CLIP) whose vocabulary is then grown to `--vocab` (random rows)."""
    model, processor = build_tiny_llava(
        text=dict(hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_layers=2, num_heads=4, num_kv_heads=2),
        vision=dict(
            image_size=args.image_size,
            patch_size=args.patch_size,
            hidden_size=32,
            intermediate_size=64,
            num_layers=1,
            num_heads=2,
        ),
    )
    model.resize_token_embeddings(args.vocab, mean_resizing=False)
    return model, processor


def _memory_field(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def measured_step(model, optimizer, composer, batch, full_logits: bool) -> tuple[float, int, float]:
    """(seconds, peak bytes above the resident set before the step, the total loss) of one training step."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the resident-set high-water mark (VmHWM) to the current size
    resident = _memory_field("VmRSS")
    seconds, logged = train_step(model, optimizer, composer, batch, step=0, full_logits=full_logits)
    return seconds, _memory_field("VmHWM") - resident, sum(float(value) for value in logged.values())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, processor = build_model(args)
    image_tokens = (args.image_size // args.patch_size) ** 2  # the "default" strategy drops CLIP's CLS
    batch = paired_batch(processor.tokenizer, model.config.image_token_id, image_tokens, args.image_size, args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # all the work of a step, the same weights
    model.train()
    variants = {
        (loss, path): (build_loss(compose_config([f"loss={loss}"]).loss), full_logits)
        for loss in args.losses
        for path, full_logits in PATHS.items()
    }
    samples = {variant: [] for variant in variants}
    for round_index in range(args.warmup + args.steps):
        names = list(variants)
        rotation = round_index % len(names)  # vary which variant runs first in a round
        for variant in names[rotation:] + names[:rotation]:
            composer, full_logits = variants[variant]
            measured = measured_step(model, optimizer, composer, batch, full_logits)
            if round_index >= args.warmup:
                samples[variant].append(measured)

    rows, length = batch["input_ids"].shape
    setup = {
        "vocab": args.vocab,
        "rows": rows,
        "seq_len": length,
        "image_tokens": image_tokens,
        "targets": int((batch["labels"][:, 1:] != -100).sum()),
        "threads": args.threads,
        "rounds": args.steps,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores visible, torch {torch.__version__}",
    }
    results = []
    for loss in args.losses:
        full, selective = samples[(loss, "full logits")], samples[(loss, "target logits")]
        results.append(
            {
                "loss": loss,
                "full_step_s": statistics.median(s for s, _, _ in full),
                "target_step_s": statistics.median(s for s, _, _ in selective),
                "speedup": statistics.median(f[0] / t[0] for f, t in zip(full, selective)),
                "full_peak_mb": statistics.median(m for _, m, _ in full) / 2**20,
                "target_peak_mb": statistics.median(m for _, m, _ in selective) / 2**20,
                "memory_ratio": statistics.median(t[1] / f[1] for f, t in zip(full, selective)),
                "max_loss_difference": max(abs(f[2] - t[2]) for f, t in zip(full, selective)),
            }
        )
    print(" ".join(f"{key}={value}" for key, value in setup.items()))
    print(f"{'loss':<12}{'full step s':>12}{'target step s':>14}{'speedup':>9}{'full peak MB':>14}"
          f"{'target peak MB':>16}{'memory ratio':>14}{'max |dloss|':>13}")
    for r in results:
        print(f"{r['loss']:<12}{r['full_step_s']:>12.3f}{r['target_step_s']:>14.3f}{r['speedup']:>9.2f}"
              f"{r['full_peak_mb']:>14.0f}{r['target_peak_mb']:>16.0f}{r['memory_ratio']:>14.3f}"
              f"{r['max_loss_difference']:>13.2e}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"setup": setup, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
