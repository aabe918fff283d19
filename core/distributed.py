"""Process-group plumbing for torchrun, the deepspeed launcher and single-process DeepSpeed runs, on GPU or CPU."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import uuid

import torch

from xmodal.core.atomic import atomic_write_text
from xmodal.core.errors import ConfigError

SHARED_CHECK_PREFIX = ".xmodal-shared-check-"  # + the token: jobs starting at once with one cache do not collide


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


def init_deepspeed_backend(timeout_s: float | None = None) -> None:
    """Start the process group before the model is built: ZeRO-3's `zero.Init` reads the world size then.

    `timeout_s` is `trainer.ddp_timeout` (None: DeepSpeed's default): the Trainer gives it only to a group it
    creates itself, never to this one.
    """
    import datetime

    import deepspeed

    backend = "gloo" if not torch.cuda.is_available() else None
    timeout = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    deepspeed.init_distributed(dist_backend=backend, **timeout)


def configure_cpu_deepspeed_state() -> bool:
    """On CPU, pre-configure accelerate's process state for DeepSpeed over gloo; True if it did.

    accelerate only picks a backend for GPU-like devices; on CPU its DeepSpeed state gets none and counts a
    world of 1, so every rank would train on the whole dataset with wrong "auto" batch sizes. The
    TrainingArguments then reuse this state (`accelerator_config.use_configured_state`).
    """
    if torch.cuda.is_available():
        return False
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return True


def check_deepspeed_config(args) -> None:
    """Refuse a DeepSpeed config whose values contradict the TrainingArguments (batch sizes, clipping, LR, ...).

    The Trainer finds these when it builds the engine, after the model is loaded; here they stop the run at once.
    """
    mismatches = getattr(getattr(args, "hf_deepspeed_config", None), "mismatches", None)
    if mismatches:
        raise ConfigError(
            "deepspeed: the DeepSpeed config contradicts the trainer settings:\n"
            + "\n".join(mismatches)
            + '\nset these DeepSpeed values to "auto" (they then follow trainer.*) or make them equal'
        )


def launched_world_size() -> int:
    """The number of processes the launcher started (`WORLD_SIZE`, set by torchrun and the DeepSpeed launcher
    before the recipe starts, so it is known before any process group exists); 1 for a single process."""
    return int(os.environ.get("WORLD_SIZE", 1))


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first, the other ranks after it (all at once when no process group exists yet)."""
    first = int(os.environ.get("RANK", "0")) == 0
    if not first:
        barrier()
    yield
    if first:
        barrier()


def require_shared_directories(directories: dict[str, str]) -> None:
    """Stop a multi-process run unless every rank sees the same files at `directories` ({what: path}).

    Rank 0 writes a fresh token into each directory and every other rank must read it back there: a node-local
    disk mounted at the same path would otherwise give each node its own checkpoints (a requeued job resumes
    from whichever node rank 0 lands on) and its own tokenized-data cache. Raises the same ConfigError on every
    rank, naming the directories and the first rank that does not see them.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world_size, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    if world_size == 1:
        return
    token = [uuid.uuid4().hex if rank == 0 else None]
    if rank == 0:
        for path in directories.values():
            atomic_write_text(os.path.join(path, SHARED_CHECK_PREFIX + token[0]), token[0])
    torch.distributed.broadcast_object_list(token, src=0)
    check_file = SHARED_CHECK_PREFIX + token[0]
    unseen = [what for what, path in directories.items() if _read_text(os.path.join(path, check_file)) != token[0]]
    reports: list = [None] * world_size
    torch.distributed.all_gather_object(reports, (rank, socket.gethostname(), unseen))
    if rank == 0:
        for path in directories.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, check_file))
    failed = [(other, host, names) for other, host, names in reports if names]
    if failed:
        other, host, _ = failed[0]
        names = sorted({name for _, _, names in failed for name in names})
        shown = ", ".join(f"{name}={directories[name]}" for name in names)
        raise ConfigError(
            f"{shown}: not on a filesystem every node sees (rank {other} on {host} cannot read the file rank 0 wrote "
            f"there; {len(failed)} of {world_size} ranks): put them on a shared filesystem (docs/cluster.md)"
        )


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def teardown() -> None:
    """Destroy the process group explicitly: a ZeRO-3 run can abort in interpreter teardown otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()


@contextlib.contextmanager
def loading_whole_models(args):
    """Let this rank alone build and use a whole model (e.g. merge LoRA on rank 0) during a ZeRO-3 run.

    While TrainingArguments carry a ZeRO-3 config, transformers builds every model inside `zero.Init`, whose
    partitioning collectives the other ranks never join: the run hangs. The config is lifted for the block.
    """
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    config = getattr(args, "hf_deepspeed_config", None)
    if config is None or not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(config)
