"""Padding waste and training tokens/s on PGPS9K text-centric prompts: random batches, length-grouped, packed.

The instances are built and tokenized exactly as `xmodal-train` does (PGPS9K, `builder=paired
builder.emit=text_centric`: diagram + the problem's clauses as text + question, widely varying lengths).
Per strategy, over one epoch of batches: the pad fraction (pad tokens / tokens computed, image tokens counted
as real); then training steps (forward through the trainer's `loss_context`, LM loss, backward, AdamW) on the
first batches, the strategies in rotation, giving real (non-pad) tokens per second (median over steps).

    random            trainer.train_sampling_strategy=random (the default)
    group_by_length   trainer.train_sampling_strategy=group_by_length (lengths = true padded lengths)
    packed            packing=true (LLaVA-style models; one padding-free row per batch)

    python scripts/bench_padding.py --root ../shared/data/pgps9k_sample        # target: pad fraction < 10 %
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
from hydra.utils import instantiate
from torch.utils.data import RandomSampler

from bench_alignment import compose_config, train_step
from xmodal.core.atomic import atomic_write_text
from xmodal.data_builders.collate import MultimodalCollator
from xmodal.data_builders.tokenize import EncodingSettings, tokenize_instances
from xmodal.losses import build_loss
from xmodal.recipes import instances_of
from xmodal.trainers.sampling import LengthGroupedSampler

STRATEGIES = ("random", "group_by_length", "packed")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/pgps9k_sample", help="PGPS9K folder (data.root)")
    parser.add_argument("--model", default="tiny_llava", help="a conf/model config with an `init` builder")
    parser.add_argument("--batch", type=int, default=16, help="conf/trainer/default.yaml's batch")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per strategy")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser.parse_args()


def batches(strategy: str, lengths: list[int], batch_size: int) -> list[list[int]]:
    """One epoch of index batches, as the trainer's sampler would draw them (seeded)."""
    generator = torch.Generator().manual_seed(0)
    if strategy == "group_by_length":
        sampler = LengthGroupedSampler(lengths, batch_size, generator=generator)
    else:
        sampler = RandomSampler(range(len(lengths)), generator=generator)
    order = list(sampler)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def pad_fraction(strategy: str, index_batches: list[list[int]], lengths: list[int]) -> float:
    real = sum(lengths)
    if strategy == "packed":
        return 0.0
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in index_batches)
    return (computed - real) / computed


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    cache = os.environ.get("XMODAL_CACHE") or os.path.expanduser("~/.cache/xmodal")  # the recipes' default cache
    cfg = compose_config(
        [f"model={args.model}", "data=pgps9k", f"data.root={args.root}", "builder=paired",
         "builder.emit=text_centric", f"trainer.per_device_train_batch_size={args.batch}", f"cache_dir={cache}"]
    )
    torch.manual_seed(0)
    model, processor = instantiate(cfg.model.init, _convert_="all")
    dataset = tokenize_instances(
        instances_of(cfg).instances, processor, EncodingSettings(**cfg.encoding),
        os.path.join(cache, "tokenized"),
    )
    lengths = list(dataset["length"])
    collators = {
        "random": MultimodalCollator(processor),
        "group_by_length": MultimodalCollator(processor),
        "packed": MultimodalCollator(processor, packing=True),
    }
    epochs = {strategy: batches(strategy, lengths, args.batch) for strategy in STRATEGIES}
    composer = build_loss(compose_config(["loss=lm"]).loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    tokens_per_s = {strategy: [] for strategy in STRATEGIES}
    for step in range(args.steps + 1):  # the first round warms up
        rotation = step % len(STRATEGIES)
        for strategy in STRATEGIES[rotation:] + STRATEGIES[:rotation]:
            indices = epochs[strategy][step % len(epochs[strategy])]
            batch = collators[strategy]([dataset[i] for i in indices])
            seconds, _ = train_step(model, optimizer, composer, batch, step)
            if step:
                tokens_per_s[strategy].append(sum(lengths[i] for i in indices) / seconds)

    results = {
        strategy: {
            "pad_fraction": pad_fraction(strategy, epochs[strategy], lengths),
            "tokens_per_s": statistics.median(tokens_per_s[strategy]),
        }
        for strategy in STRATEGIES
    }
    setup = {
        "instances": len(lengths),
        "length_min": min(lengths),
        "length_median": statistics.median(lengths),
        "length_max": max(lengths),
        "batch": args.batch,
        "model": args.model,
        "timed_steps": args.steps,
        "threads": args.threads,
    }
    print(" ".join(f"{key}={value}" for key, value in setup.items()))
    print(f"{'strategy':<18}{'pad fraction':>14}{'tokens/s':>10}{'vs random':>11}")
    for strategy, r in results.items():
        speedup = r["tokens_per_s"] / results["random"]["tokens_per_s"]
        print(f"{strategy:<18}{r['pad_fraction']:>13.1%}{r['tokens_per_s']:>10.0f}{speedup:>10.2f}x")
    if args.json:
        atomic_write_text(args.json, json.dumps({"setup": setup, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
