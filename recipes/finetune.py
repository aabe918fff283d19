"""xmodal-train: the fine-tuning recipe, top to bottom: config -> model -> instances -> train -> save.

Launch: `xmodal-train [overrides]` (one process), `torchrun --nproc_per_node N --no-python xmodal-train ...`,
or `deepspeed --num_gpus N --module xmodal.recipes.finetune ...`. See README.md.
"""

from __future__ import annotations

import os
import time

from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.core.errors import ConfigError
from xmodal.data_builders.tokenize import EncodingSettings, tokenize_instances
from xmodal.losses.registry import build_loss
from xmodal.recipes import CONFIG_DIR, base_model, claim_run_directory, instances_of, open_run_directory
from xmodal.conf.schema import check_schema
from xmodal.core.console import hydra_console_script
from xmodal.trainers.models import load_processor, set_image_pixels
from xmodal.trainers.lifecycle.nonfinite import NonFiniteLossGuard
from xmodal.trainers.lifecycle.skipped_records import SkippedRecordsCallback
from xmodal.trainers.lifecycle.runs import (
    build_training_args,
    export_logger_environment,
    load_training_model,
    metric_callbacks,
    start_deepspeed_backend,
    train_and_save,
    training_callbacks,
)
from xmodal.trainers.sft import XModalSFTTrainer


def build_train_dataset(cfg: DictConfig, processor):
    """Source records -> builder instances -> cached token ids. Returns the dataset and the built instances."""
    built = instances_of(cfg)
    settings = EncodingSettings(**cfg.encoding)
    dataset = tokenize_instances(
        built.instances, processor, settings, os.path.join(cfg.cache_dir, "tokenized")
    )
    if getattr(built.source, "streaming", False):
        if cfg.trainer.train_sampling_strategy == "group_by_length" or cfg.metrics:
            raise ConfigError(
                "data.streaming=true: trainer.train_sampling_strategy=group_by_length and metric probes need the "
                "whole corpus; set trainer.train_sampling_strategy=random and metrics=none, or data.streaming=false"
            )
        return dataset, built
    if len(dataset) == 0:
        raise ConfigError(f"every instance is longer than encoding.max_length={settings.max_length}")
    if built.builder.ordered and len(dataset) < len(built.instances):
        # A schedule (curriculum) is exactly as long as the run: a dropped instance shifts it and the trainer
        # would wrap around to its start.
        raise ConfigError(
            f"{len(built.instances) - len(dataset)} instance(s) of the ordered schedule of {cfg.builder._target_} "
            f"are longer than encoding.max_length={settings.max_length}; raise encoding.max_length"
        )
    return dataset, built


def train(cfg: DictConfig) -> str:
    """Run one fine-tune; returns the directory of the final model."""
    started = time.monotonic()
    resume_from = claim_run_directory(cfg)
    if cfg.packing and cfg.metrics:
        raise ConfigError("packing=true: the metric callbacks' probes need one row per sequence; set packing=false")
    uses_deepspeed = start_deepspeed_backend(cfg.deepspeed, cfg.trainer.ddp_timeout)
    export_logger_environment(cfg.logger)
    base = base_model(cfg)
    args = build_training_args(cfg.trainer, cfg.deepspeed)
    set_seed(cfg.seed)
    open_run_directory(cfg, args)

    processor = load_processor(base, cfg.model.trust_remote_code)
    processor = set_image_pixels(processor, cfg.model.get("min_pixels"), cfg.model.get("max_pixels"))
    # Data first: a bad record stops the run before a large model is loaded.
    with args.main_process_first(desc="build and tokenize instances"):
        train_dataset, built = build_train_dataset(cfg, processor)
    model = load_training_model(cfg.model, cfg.finetune, base)
    metrics = metric_callbacks(cfg.metrics)
    trainer = XModalSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=MultimodalCollator(processor, packing=cfg.packing),
        processing_class=processor,
        callbacks=[SkippedRecordsCallback(built.source), *training_callbacks(cfg.output_dir, metrics)],
        loss_composer=build_loss(cfg.loss),
        ordered=getattr(built.builder, "ordered", False),
        nonfinite=NonFiniteLossGuard(cfg.on_nonfinite_loss, cfg.max_skipped_steps, uses_deepspeed),
        component_learning_rates=OmegaConf.to_container(cfg.optim.lr),
    )
    for callback in metrics:
        callback.bind(trainer)  # probes are collated from the training set with the run's own collator
    return train_and_save(
        trainer, processor, output_dir=cfg.output_dir, base_model=base, model_cfg=cfg.model,
        lora=cfg.finetune.mode == "lora", resume_from=resume_from, started=started,
    )


main = hydra_console_script(
    "xmodal-train", train, CONFIG_DIR, "config", distributed_launch=True, check=check_schema
)


if __name__ == "__main__":
    main()
