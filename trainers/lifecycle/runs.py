"""What every training entry point (xmodal-train, xmodal-rl) shares: arguments from the config, the logger's
environment, metric callbacks, and the final model directory."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments

from xmodal.core.atomic import publish_directory
from xmodal.core.errors import ConfigError
from xmodal.core import distributed
from xmodal.trainers.lifecycle.callbacks import CheckpointCompletionCallback, MetricsFileCallback
from xmodal.trainers.lifecycle.run_directory import open_output_dir
from xmodal.core.console import run_summary
from xmodal.trainers.models.finetuning import FinetuneSettings, apply_finetuning
from xmodal.trainers.models import load_model

logger = logging.getLogger(__name__)


def start_deepspeed_backend(deepspeed_cfg: DictConfig, timeout_s: float | None = None) -> bool:
    """With a `deepspeed` config: the launcher's environment and DeepSpeed's process group (`timeout_s`:
    `trainer.ddp_timeout`), set up before the training arguments (their "auto" batch sizes read the world size).
    Returns whether DeepSpeed is on."""
    uses_deepspeed = bool(OmegaConf.to_container(deepspeed_cfg))
    if uses_deepspeed:
        distributed.ensure_launcher_environment()
        distributed.init_deepspeed_backend(timeout_s)
    return uses_deepspeed


def examples_per_step(trainer_cfg: DictConfig) -> int:
    """Instances per optimizer step of the run `trainer` configures (what a step-based schedule counts in):
    per-device batch x gradient accumulation x the launched world size."""
    batch = OmegaConf.select(trainer_cfg, "per_device_train_batch_size", default=1)
    accumulation = OmegaConf.select(trainer_cfg, "gradient_accumulation_steps", default=1)
    return int(batch) * int(accumulation) * distributed.launched_world_size()


def load_training_model(model_cfg: DictConfig, finetune_cfg: DictConfig, base_model: str):
    """The model to train: loaded as `model` says, then frozen / LoRA-wrapped as `finetune` says."""
    model = load_model(base_model, model_cfg.dtype, model_cfg.attn_implementation, model_cfg.trust_remote_code)
    return apply_finetuning(model, FinetuneSettings(**OmegaConf.to_container(finetune_cfg, resolve=True)))


def training_callbacks(output_dir: str, metrics: list) -> list:
    """Every run's callbacks (metrics.jsonl, checkpoint completion and rotation) and its metric callbacks."""
    return [MetricsFileCallback(output_dir), CheckpointCompletionCallback(), *metrics]


def build_training_args(
    trainer_cfg: DictConfig, deepspeed_cfg: DictConfig, args_class: type = TrainingArguments, **extra
) -> TrainingArguments:
    """`args_class` (TrainingArguments or a subclass such as TRL's GRPOConfig) from `trainer` + `deepspeed` +
    `extra`; built before the model so ZeRO-3 partitions at load."""
    kwargs = {**OmegaConf.to_container(trainer_cfg, resolve=True), **extra}
    deepspeed_config = OmegaConf.to_container(deepspeed_cfg, resolve=True) or None
    if deepspeed_config and distributed.configure_cpu_deepspeed_state():
        kwargs.setdefault("accelerator_config", {})["use_configured_state"] = True
    elif not deepspeed_config and not torch.cuda.is_available() and distributed.launched_world_size() > 1:
        # Several processes without a GPU: only `use_cpu` makes accelerate run DDP over gloo; otherwise every
        # rank trains alone on its own copy and each one writes the run directory as if it were rank 0.
        kwargs.setdefault("use_cpu", True)
    try:
        args = args_class(**kwargs, deepspeed=deepspeed_config)
    except TypeError as error:
        raise ConfigError(f"trainer: {error} (every trainer.* key must be a {args_class.__name__} field)") from error
    distributed.check_deepspeed_config(args)
    return args


def open_run(
    args: TrainingArguments, output_dir: str, cache_dir: str, *, overwrite: bool, resolved_config: dict
) -> None:
    """Rank 0 opens the run directory (xmodal.trainers.lifecycle.run_directory.open_output_dir, which records
    `resolved_config`); then every rank checks that the run directory and the cache are the same files on every node."""
    if args.process_index == 0:
        open_output_dir(output_dir, overwrite, resolved_config)
    distributed.require_shared_directories({"output_dir": output_dir, "cache_dir (XMODAL_CACHE)": cache_dir})


def export_logger_environment(logger_cfg: DictConfig) -> None:
    """Set the logger's variables from the config (which config.yaml records); assigned, not defaulted, so the
    jobs of one multirun process each log into their own output_dir."""
    for key, value in (logger_cfg.get("env") or {}).items():
        os.environ[key] = str(value)
    if "wandb" in list(logger_cfg.report_to) and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # no key: log locally, never prompt


def metric_callbacks(metrics_cfg: DictConfig | None) -> list:
    """The `metrics` group's callbacks, built by name order."""
    return [instantiate(callback_cfg) for _, callback_cfg in sorted((metrics_cfg or {}).items())]


def save_final(trainer, processor, output_dir: str, base_model: str, model_cfg: DictConfig, lora: bool) -> str:
    """`<output_dir>/final`: full weights + processor, loadable with the Auto classes. A `lora` run's adapters are
    merged into the base model, reloaded as `model` says."""
    final_dir = os.path.join(output_dir, "final")
    staging = os.path.join(output_dir, ".final.staging")
    if trainer.is_world_process_zero():  # a save killed earlier may have left files that this model does not overwrite
        shutil.rmtree(staging, ignore_errors=True)
    distributed.barrier()
    if lora:
        adapter_dir = os.path.join(output_dir, "adapter")
        trainer.save_model(adapter_dir)  # every rank: gathers the ZeRO-3 shards of the adapters
        distributed.barrier()
        if trainer.is_world_process_zero():
            from peft import PeftModel

            with distributed.loading_whole_models(trainer.args):
                base = load_model(base_model, model_cfg.dtype, model_cfg.attn_implementation, model_cfg.trust_remote_code)
                PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(staging)
    else:
        trainer.save_model(staging)
    if trainer.is_world_process_zero():
        processor.save_pretrained(staging)
        publish_directory(staging, final_dir)
    distributed.barrier()
    return final_dir


def train_and_save(
    trainer, processor, *, output_dir: str, base_model: str, model_cfg: DictConfig, lora: bool,
    resume_from: str | None, started: float,
) -> str:
    """Train (from `resume_from`, see xmodal.trainers.lifecycle.run_directory.claim_output_dir), save `final/`
    (see `save_final`), release the engine, print the run summary; returns the final directory. `started` is the
    run's `time.monotonic()` start."""
    # The Trainer runs a full gc.collect() as training starts, and free_memory() below runs another: each scans
    # every object alive, about half a million after importing torch and transformers and loading the model, all
    # of which outlive the run. Frozen, they are skipped (about a second a collection on a busy 2-core machine);
    # whatever training creates is still collected.
    gc.freeze()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
        final_dir = save_final(trainer, processor, output_dir, base_model, model_cfg, lora)
        # Release the DeepSpeed engine (ZeRO-3 hooks, optimizer state) while the process group still exists;
        # left to interpreter shutdown, a ZeRO-3 rank can abort in teardown.
        trainer.accelerator.free_memory()
    finally:
        gc.unfreeze()
    if trainer.is_world_process_zero():
        state = trainer.state
        logger.info(run_summary(state.log_history, state.global_step, output_dir, final_dir, time.monotonic() - started))
    return final_dir
