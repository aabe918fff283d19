"""Process-group plumbing for torchrun, the deepspeed launcher and single-process DeepSpeed runs, on GPU or CPU."""

from __future__ import annotations

import os
import socket
import sys

import torch


def strip_local_rank_argument(argv: list[str]) -> list[str]:
    """The deepspeed launcher appends `--local_rank=N`, which Hydra rejects; move it to LOCAL_RANK."""
    kept = []
    arguments = iter(argv)
    for argument in arguments:
        if argument.startswith("--local_rank="):
            os.environ.setdefault("LOCAL_RANK", argument.split("=", 1)[1])
        elif argument == "--local_rank":
            os.environ.setdefault("LOCAL_RANK", next(arguments))
        else:
            kept.append(argument)
    return kept


def ensure_launcher_environment() -> None:
    """Give a plain single-process run the variables a launcher would set.

    Without them DeepSpeed looks for MPI to discover its world and fails.
    """
    if "RANK" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def init_deepspeed_backend() -> None:
    """Start the process group before the model is built: ZeRO-3's `zero.Init` reads the world size then."""
    import deepspeed

    backend = "gloo" if not torch.cuda.is_available() else None
    deepspeed.init_distributed(dist_backend=backend)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def teardown() -> None:
    """Destroy the process group explicitly: a ZeRO-3 run can abort in interpreter teardown otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
