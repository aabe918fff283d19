"""Seconds per GB to write a checkpoint where the run writes it: the floor for SLURM's signal lead time.

A checkpoint is the model's weights (safetensors, `model.safetensors` or shards) plus the optimizer state and,
under DeepSpeed, the ZeRO shards (`torch.save`, pickled tensors); every file ends with an fsync, as a crash-safe
save must. This writes `--gigabytes` of random float32 tensors in both formats into `--directory`, `--repeats`
times, and reports the median seconds per GB of each (the files are deleted). Run it on the filesystem that
holds your output_dir, from a compute node, with a size close to your checkpoint's: a 7B full fine-tune with
AdamW in bf16 writes about 14 GB of weights + 84 GB of fp32 master weights and moments (docs/cluster.md).

    python scripts/bench_checkpoint_save.py --gigabytes 0.5 --directory /tmp
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from safetensors.torch import save_file

GB = 1024**3
SHARD_BYTES = 64 * 1024**2  # tensors of 64 MiB, as a model's layers are separate tensors


def _fsynced(path: str) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _tensors(gigabytes: float) -> dict[str, torch.Tensor]:
    count = max(1, round(gigabytes * GB / SHARD_BYTES))
    return {f"layer{i}.weight": torch.rand(SHARD_BYTES // 4) for i in range(count)}


def _seconds_per_gb(write, tensors: dict[str, torch.Tensor], directory: str) -> float:
    size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    with tempfile.TemporaryDirectory(dir=directory, prefix=".bench-checkpoint-") as staging:
        path = os.path.join(staging, "state")
        started = time.perf_counter()
        write(tensors, path)
        _fsynced(path)
        elapsed = time.perf_counter() - started
    return elapsed / (size / GB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=0.5, help="how much to write per repeat (held in memory)")
    parser.add_argument("--directory", default=".", help="where to write: the filesystem of your output_dir")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tensors = _tensors(args.gigabytes)
    writers = {"safetensors": save_file, "torch.save": torch.save}
    report = {
        "directory": os.path.abspath(args.directory),
        "gigabytes": sum(t.numel() * t.element_size() for t in tensors.values()) / GB,
        **{
            f"{name}_s_per_gb": round(
                statistics.median(_seconds_per_gb(write, tensors, args.directory) for _ in range(args.repeats)), 3
            )
            for name, write in writers.items()
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
