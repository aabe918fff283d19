"""`setting=paper` composes paper 2's released values for every modality_gap_rl/* (xmodal-rl) and modality_gap/*
(xmodal-train) experiment, and xmodal-eval's released evaluation. The expected values are written here from the
release (UCSB-NLP-Chang/Bridging-Modality-Gap: verl/dapo_full-text.sh, dapo_no-text.sh, dapo_kl.sh,
customized_reward_geo9k.py, eval/pgps9k/), not read back from the YAML; compositions are in-process."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from xmodal.losses.alignment import RELEASED_ESTIMATE_BOUND, RELEASED_LOG_RATIO_BOUND
from xmodal.losses.rewards import RELEASED_FORMAT_PATTERN, build_rewards
from xmodal.recipes import CONFIG_DIR

GPUS = 8  # trainer.n_gpus_per_node=8 in every released script
# The released DAPO scripts' values (verl/dapo_*.sh; reward from customized_reward_geo9k.py; verl's actor defaults
# for weight decay, gradient clip and warm-up, which the scripts leave as they are).
RELEASED_RL = {
    "correct weight": 0.9,
    "format weight": 0.1,
    "format pattern": r"<think>.*</think>.*\\boxed\{.*\}.*",
    "correct grader": "release",  # grade_answer on the boxed content, no tolerance
    "generations": 5,  # actor_rollout_ref.rollout.n
    "temperature": 0.8,
    "response length": 4096,  # data.max_response_length (dapo_kl.sh: 4000, listed as adapted in the README)
    "learning rate": 1e-6,
    "lr schedule": "constant",
    "warm-up steps": 0,
    "weight decay": 0.01,
    "gradient clip": 1.0,
    "prompts per rollout batch": 512,  # data.train_batch_size
    "prompts per update": 128,  # actor.ppo_mini_batch_size
    "updates per rollout batch": 4,  # 512 / 128
    "clip low": 0.2,
    "clip high": 0.28,
    "dual clip": 10.0,  # actor.clip_ratio_c
    "KL to a reference": 0.0,  # use_kl_loss=False
    "loss aggregation": "dapo",  # loss_agg_mode=token-mean over the batch
    "group filter": True,  # algorithm.filter_groups.enable
    "refill": True,  # DAPO keeps generating until the batch is full
    "overlong buffer": 1024,
    "overlong factor": 1.0,
    "rollout batches": 200,  # the 200-step checkpoint the released kl run starts from
}
RELEASED_ALIGNMENT = {"weight": 0.01, "estimator": "k3", "clamp": True}  # contrastive_kl_coef, low_var_kl
RELEASED_RL_NORMALIZATION = "release"  # dp_actor.py: token mean per micro-batch, divided by the accumulation steps
ALIGNED_RL = {"kl"}
RL_RECIPES = ["full_text", "no_text", "mix", "curriculum", "kl", "kl_curriculum"]
SFT_RECIPES = ["full_text", "no_text", "mix", "curriculum", "kl", "kl_mix", "kl_curriculum"]
ALIGNED_SFT = {"kl", "kl_mix"}
DATA = ["setting=paper", "data=pgps9k", "data.root=/data/PGPS9K", "data.prompt_style=paper"]


def composed(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def rl_values(cfg) -> dict:
    """The composed config in the terms of RELEASED_RL (batch arithmetic on the released 8 GPUs)."""
    grpo, trainer = cfg.rl.grpo, cfg.trainer
    rollouts_per_micro_batch = trainer.per_device_train_batch_size * GPUS
    steps_per_generation = grpo.steps_per_generation or trainer.gradient_accumulation_steps
    return {
        "correct weight": cfg.reward.correct.weight,
        "format weight": cfg.reward.format.weight,
        "format pattern": cfg.reward.format.get("pattern", RELEASED_FORMAT_PATTERN),
        "correct grader": cfg.reward.correct.grader,
        "generations": grpo.num_generations,
        "temperature": grpo.temperature,
        "response length": grpo.max_completion_length,
        "learning rate": trainer.learning_rate,
        "lr schedule": trainer.lr_scheduler_type,
        "warm-up steps": trainer.warmup_steps,
        "weight decay": trainer.weight_decay,
        "gradient clip": trainer.max_grad_norm,
        "prompts per rollout batch": rollouts_per_micro_batch * steps_per_generation / grpo.num_generations,
        "prompts per update": rollouts_per_micro_batch * trainer.gradient_accumulation_steps / grpo.num_generations,
        "updates per rollout batch": steps_per_generation / trainer.gradient_accumulation_steps,
        "clip low": grpo.epsilon,
        "clip high": grpo.epsilon_high,
        "dual clip": grpo.delta,
        "KL to a reference": grpo.beta,
        "loss aggregation": grpo.loss_type,
        "group filter": cfg.rl.filter_equal_reward_groups,
        "refill": cfg.rl.refill.enabled,
        "overlong buffer": cfg.rl.overlong.buffer,
        "overlong factor": cfg.rl.overlong.penalty_factor,
        "rollout batches": trainer.max_steps * trainer.gradient_accumulation_steps / steps_per_generation,
    }


@pytest.mark.parametrize("recipe", RL_RECIPES)
def test_rl_recipes_compose_every_released_value(recipe):
    cfg = composed("rl", [f"experiment=modality_gap_rl/{recipe}", *DATA])
    assert rl_values(cfg) == RELEASED_RL
    alignment = OmegaConf.to_container(cfg.rl.align)
    if recipe in ALIGNED_RL:
        assert alignment == {**RELEASED_ALIGNMENT, "normalize": RELEASED_RL_NORMALIZATION}
        assert (RELEASED_LOG_RATIO_BOUND, RELEASED_ESTIMATE_BOUND) == (20.0, 10.0)  # verl's kl_penalty clamps
    else:
        assert alignment["weight"] == 0.0
    stage_one = {"curriculum": "full_text", "kl_curriculum": "kl"}.get(recipe)
    if stage_one is None:
        assert cfg.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
    else:  # stage two starts from the model stage one publishes under the same setting
        first = composed("rl", [f"experiment=modality_gap_rl/{stage_one}", *DATA])
        assert first.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
        assert cfg.model.path == f"{first.output_dir}/final"
    assert not cfg.finetune.freeze_vision_tower and cfg.trainer.bf16


@pytest.mark.parametrize("recipe", RL_RECIPES)
def test_rl_recipes_keep_the_embedded_regime_without_the_setting(recipe):
    cfg = composed("rl", [f"experiment=modality_gap_rl/{recipe}"])
    assert list(cfg.reward) == ["correct"] and cfg.reward.correct.grader == "lenient"
    assert cfg.rl.grpo.delta is None and cfg.rl.grpo.steps_per_generation is None
    assert (cfg.rl.overlong.buffer, cfg.rl.refill.enabled) == (0, False)


@pytest.mark.parametrize("recipe", SFT_RECIPES)
def test_sft_recipes_compose_the_released_optimiser_and_alignment(recipe):
    cfg = composed("config", [f"experiment=modality_gap/{recipe}", *DATA])
    trainer = cfg.trainer
    assert trainer.learning_rate == RELEASED_RL["learning rate"]
    assert (trainer.lr_scheduler_type, trainer.warmup_steps) == (RELEASED_RL["lr schedule"], RELEASED_RL["warm-up steps"])
    assert (trainer.weight_decay, trainer.max_grad_norm) == (RELEASED_RL["weight decay"], RELEASED_RL["gradient clip"])
    assert cfg.encoding.max_length == 1024 + RELEASED_RL["response length"]  # data.max_prompt_length + response
    align = cfg.loss.terms.get("align")
    if recipe in ALIGNED_SFT:
        assert {key: align[key] for key in RELEASED_ALIGNMENT} == RELEASED_ALIGNMENT
    else:
        assert align is None


def test_evaluation_composes_the_released_evaluation():
    cfg = composed("evaluate", ["setting=paper", "data=pgps9k", "data.root=/data/PGPS9K"])
    # eval/pgps9k: n=4 samples at temperature 0.6, max_tokens 4096, its own prompts, last boxed answer graded
    assert (cfg.evaluate.num_samples, cfg.evaluate.temperature, cfg.evaluate.max_new_tokens) == (4, 0.6, 4096)
    assert (cfg.evaluate.grader, cfg.data.prompt_style, cfg.split) == ("release", "release_eval", "test")
    default = composed("evaluate", [])
    assert default.evaluate.grader == "lenient"


def test_the_composed_reward_grades_as_released():
    """The reward that `setting=paper` builds: 0.9 x (boxed answer by the release's grader, no tolerance) + 0.1 x format."""
    released, weights = build_rewards(composed("rl", ["experiment=modality_gap_rl/kl", *DATA]).reward)
    embedded, _ = build_rewards(composed("rl", ["experiment=modality_gap_rl/kl"]).reward)
    assert weights == [0.9, 0.1]
    completions = [r"<think>AB = 2\sqrt{3}</think> \boxed{2\sqrt{3}}", "<think>so 3.464</think> 3.464"]
    target = ["3.464", "3.464"]
    assert [reward(None, completions, target=target) for reward in released] == [[0.0, 0.0], [1.0, 0.0]]
    assert embedded[0](None, completions, target=target) == [1.0, 1.0]  # lenient: 1 %, and the last number
