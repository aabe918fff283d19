"""xmodal-rl: reinforcement learning with verifiable rewards (GRPO/DAPO on TRL's GRPOTrainer), top to bottom:
config -> model -> prompt rows -> rollouts, rewards, policy loss (+ alignment term) -> save.

`xmodal-rl [overrides]` composes `conf/rl.yaml`: the root config's groups (model, data, builder, finetune,
deepspeed, logger, metrics, experiment) plus `reward` and the `rl` node. Launch it like xmodal-train
(`torchrun --nproc_per_node N --no-python xmodal-rl ...`, `deepspeed=zero2|zero3`). The paper recipes are
`experiment=modality_gap_rl/{full_text,no_text,mix,curriculum,kl,kl_curriculum}`; see README.md.
"""

from __future__ import annotations

import os
import time

from omegaconf import DictConfig, OmegaConf
from transformers import set_seed
from trl import GRPOConfig

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.data_builders.rollout_prompts import rollout_dataset, sampled_view
from xmodal.data_builders.tokenize import EncodingSettings, tokenize_instances
from xmodal.recipes import CONFIG_DIR, base_model, claim_run_directory, instances_of, open_run_directory
from xmodal.conf.schema import check_schema
from xmodal.core.console import hydra_console_script
from xmodal.losses.alignment import RolloutAlignment, require_pairs
from xmodal.losses.rewards import OVERLONG_REWARD, build_rewards, overlong_shaping
from xmodal.trainers.grpo import RolloutRefill, XModalGRPOTrainer
from xmodal.trainers.models import load_processor
from xmodal.trainers.lifecycle.runs import (
    build_training_args,
    export_logger_environment,
    load_training_model,
    metric_callbacks,
    start_deepspeed_backend,
    train_and_save,
    training_callbacks,
)

PROBE_INSTANCES = 64  # instances tokenized for the metric callbacks' probe sets (each takes its probe_size)


def build_rl_args(cfg: DictConfig, reward_weights: list[float], ordered: bool) -> GRPOConfig:
    """GRPOConfig from `trainer` + `deepspeed` + `rl.grpo`; an ordered builder keeps its prompt order."""
    grpo = OmegaConf.to_container(cfg.rl.grpo, resolve=True)
    return build_training_args(
        cfg.trainer, cfg.deepspeed, GRPOConfig, **grpo, reward_weights=reward_weights, shuffle_dataset=not ordered
    )


def check_alignment_data(alignment: RolloutAlignment, dataset) -> None:
    if alignment.weight > 0:
        require_pairs(any(prompt is not None for prompt in dataset["vision_prompt"]), "rl.align")


def build_trainer(cfg: DictConfig) -> tuple[XModalGRPOTrainer, object, str]:
    """(trainer, processor, base model location) of the configured run, callbacks bound, ready to train."""
    start_deepspeed_backend(cfg.deepspeed, cfg.trainer.ddp_timeout)
    export_logger_environment(cfg.logger)
    base = base_model(cfg)
    rewards, reward_weights = build_rewards(cfg.reward)
    shaping = overlong_shaping(cfg.rl.grpo.max_completion_length, **cfg.rl.overlong)
    if shaping is not None:
        rewards.append(shaping[0])
        reward_weights.append(shaping[1])
    alignment = RolloutAlignment(**OmegaConf.to_container(cfg.rl.align, resolve=True))
    # Data first: a bad record stops the run before a large model is loaded.
    built = instances_of(cfg)
    dataset = rollout_dataset(built.instances)
    check_alignment_data(alignment, dataset)
    args = build_rl_args(cfg, reward_weights, ordered=getattr(built.builder, "ordered", False))
    set_seed(cfg.seed)
    open_run_directory(cfg, args)

    processor = load_processor(base, cfg.model.trust_remote_code)
    # TRL left-pads its prompt ids and takes per-token fields (Qwen2-VL's mm_token_type_ids) from the processor.
    processor.tokenizer.padding_side = "left"
    model = load_training_model(cfg.model, cfg.finetune, base)
    metrics = metric_callbacks(cfg.metrics)
    trainer = XModalGRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=training_callbacks(cfg.output_dir, metrics),
        alignment=alignment,
        filter_equal_reward_groups=cfg.rl.filter_equal_reward_groups,
        refill=RolloutRefill(**cfg.rl.refill),
        shaping_rewards=(OVERLONG_REWARD,),
        component_learning_rates=OmegaConf.to_container(cfg.optim.lr),
    )
    bind_metric_callbacks(metrics, trainer, built.instances, processor, cfg)
    return trainer, processor, base


def bind_metric_callbacks(metrics: list, trainer, instances: list[dict], processor, cfg: DictConfig) -> None:
    """GRPO trains on prompts, not token rows: metric callbacks probe the sampled views of the first instances
    with image, tokenized and collated as xmodal-train does."""
    if not metrics:
        return
    views = [sampled_view(instance) for instance in instances if instance["images"]][:PROBE_INSTANCES]
    rows = tokenize_instances(
        views, processor, EncodingSettings(**cfg.encoding), os.path.join(cfg.cache_dir, "tokenized")
    )
    collator = MultimodalCollator(processor)
    for callback in metrics:
        size = min(len(rows), getattr(callback, "probe_size", len(rows)))
        callback.bind(trainer, probe_rows=[rows[i] for i in range(size)], collator=collator)


def train(cfg: DictConfig) -> str:
    """Run one RL fine-tune; returns the directory of the final model."""
    started = time.monotonic()
    resume_from = claim_run_directory(cfg)
    trainer, processor, base = build_trainer(cfg)
    return train_and_save(
        trainer, processor, output_dir=cfg.output_dir, base_model=base, model_cfg=cfg.model,
        lora=cfg.finetune.mode == "lora", resume_from=resume_from, started=started,
    )


main = hydra_console_script("xmodal-rl", train, CONFIG_DIR, "rl", distributed_launch=True, check=check_schema)


if __name__ == "__main__":
    main()
