"""The released DAPO regime on TRL's knobs, on a real tiny XModalGRPOTrainer: the dual clip (TRL's `delta`) against
verl's dual-clip formula on hand-computed numbers, the overlong shaping, and the refill of filtered groups."""

from __future__ import annotations

import math

import pytest
import torch

from xmodal.losses.rewards import overlong_shaping
from xmodal.trainers.grpo import RolloutRefill, _replace_groups
from tests.support.rl import build_rl_trainer

# Importance ratios pi / pi_old per completion token, and the two advantages of the rows.
RATIOS = [0.5, 1.1, 1.5, 20.0]
ADVANTAGES = [1.0, -1.0]


def verl_dual_clip_loss(ratio: float, advantage: float, low=0.2, high=0.28, dual=10.0) -> float:
    """verl's compute_policy_loss with clip_ratio_c (the release's dual clip), one token."""
    clipped = min(max(ratio, 1 - low), 1 + high)
    loss = max(-advantage * ratio, -advantage * clipped)
    return min(loss, -advantage * dual) if advantage < 0 else loss


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, cache_dir):
    trainer = build_rl_trainer(tmp_path_factory.mktemp("rl-regime"), ["model=tiny_llava", "rl.grpo.delta=10.0"])
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def loss_at_ratios(trainer, ratios: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's DAPO loss (through the subclass) on two rows whose tokens have exactly `ratios`; and its gradient
    with respect to the current log-probs, per token."""
    prompt_ids = torch.tensor([trainer.processing_class.tokenizer("A B C").input_ids] * 2)
    completion_ids = torch.randint(5, 60, (2, len(RATIOS)), generator=torch.Generator().manual_seed(0))
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": torch.ones_like(completion_ids),
        "advantages": torch.tensor(ADVANTAGES),
        "num_items_in_batch": torch.tensor(float(completion_ids.numel())),
    }
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.ones(2, prompt_ids.size(1) + len(RATIOS)),
            len(RATIOS),
        )
    inputs["old_per_token_logps"] = logps - ratios.log()
    captured = {}

    def keep_gradient(grad):
        captured["grad"] = grad

    original = trainer._get_per_token_logps_and_entropies

    def with_hook(*args, **kwargs):
        result = original(*args, **kwargs)
        result[0].register_hook(keep_gradient)
        return result

    trainer._get_per_token_logps_and_entropies = with_hook
    try:
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
    finally:
        del trainer._get_per_token_logps_and_entropies
        trainer.model.zero_grad()
    return loss.detach(), captured["grad"]


def test_trl_delta_is_verls_dual_clip(trainer):
    ratios = torch.tensor([RATIOS, RATIOS])
    loss, grad = loss_at_ratios(trainer, ratios)
    # by hand: A = +1 -> -0.5, -1.1, -1.28, -1.28; A = -1 -> 0.8, 1.1, 1.5, 10 (dual clip); token mean over 8
    hand = (-0.5 - 1.1 - 1.28 - 1.28 + 0.8 + 1.1 + 1.5 + 10.0) / 8
    verl = sum(verl_dual_clip_loss(r, a) for a in ADVANTAGES for r in RATIOS) / 8
    assert verl == pytest.approx(hand)
    assert loss.item() == pytest.approx(hand, rel=1e-4)
    # gradient flows where verl's chosen term depends on the ratio: d(-A r)/d log p = -A r / 8; zero where a clip binds
    expected = torch.tensor([[-0.5, -1.1, 0.0, 0.0], [0.0, 1.1, 1.5, 0.0]]) / 8
    torch.testing.assert_close(grad, expected, rtol=1e-3, atol=1e-5)


def test_without_delta_a_negative_advantage_ratio_is_unbounded(trainer):
    trainer.args.delta = None
    try:
        loss, _ = loss_at_ratios(trainer, torch.tensor([RATIOS, RATIOS]))
    finally:
        trainer.args.delta = 10.0
    assert loss.item() == pytest.approx((-0.5 - 1.1 - 1.28 - 1.28 + 0.8 + 1.1 + 1.5 + 20.0) / 8, rel=1e-4)


def test_overlong_shaping_is_daposs_linear_penalty():
    reward, weight = overlong_shaping(max_completion_length=4096, buffer=1024, penalty_factor=1.0)
    # verl's DAPO reward manager: min(-(length - (4096 - 1024)) / 1024 * factor, 0)
    lengths = [100, 3072, 3584, 4096]
    assert reward(completion_ids=[[0] * n for n in lengths]) == [0.0, 0.0, -0.5, -1.0]
    assert (reward.__name__, weight) == ("overlong", 1.0)
    assert overlong_shaping(4096, 0, 1.0) is None


def test_replace_groups_moves_whole_groups_with_their_images(trainer):
    rows = [trainer.train_dataset[i] for i in range(2) for _ in range(trainer.num_generations)]
    trainer.model.train()
    first, _ = trainer._score_rollouts(rows, "train")
    second, _ = trainer._score_rollouts(list(reversed(rows)), "train")
    merged = _replace_groups(first, second, [1], [0], trainer.num_generations, trainer._tokenizer.pad_token_id)
    group = trainer.num_generations
    width = max(first["completion_ids"].size(1), second["completion_ids"].size(1))
    assert merged["completion_ids"].shape == (2 * group, width)
    first_length = first["completion_ids"].size(1)
    assert torch.equal(merged["completion_ids"][:group, :first_length], first["completion_ids"][:group])
    second_length = second["completion_ids"].size(1)
    assert torch.equal(merged["completion_ids"][group:, :second_length], second["completion_ids"][:group])
    assert torch.equal(merged["advantages"][group:], second["advantages"][:group])
    assert torch.equal(merged["pixel_values"], torch.cat([first["pixel_values"][:group], second["pixel_values"][:group]]))
    assert merged["num_images"] == first["num_images"][:group] + second["num_images"][:group]


def test_refill_runs_until_capped_and_logs_its_rounds(trainer):
    """Greedy decoding gives every rollout of a group the same answer: nothing is informative, so the refill runs
    its cap (drawing further prompts each round) and the batch keeps no group."""
    rows = [trainer.train_dataset[i] for i in range(2) for _ in range(trainer.num_generations)]
    trainer.refill = RolloutRefill(enabled=True, max_rounds=2)
    trainer.generation_config.do_sample = False
    trainer._metrics["train"].clear()
    drawn_before = len(trainer._refill_order)
    try:
        trainer.model.train()
        output = trainer._generate_and_score_completions(rows)
    finally:
        trainer.refill, trainer.generation_config.do_sample = RolloutRefill(), True
    assert trainer._metrics["train"]["refill_rounds"] == [2.0]
    # two rounds of two prompts each, drawn from a fresh walk through the 32 records
    assert drawn_before == 0 and len(trainer._refill_order) == len(trainer.train_dataset) - 4
    assert trainer._metrics["train"]["groups_kept"] == [0.0]
    assert output["tool_mask"].sum() == 0 and output["num_items_in_batch"] == 0
    assert not math.isnan(float(output["advantages"].abs().sum()))


@pytest.mark.slow
def test_two_updates_per_rollout_batch_with_every_regime_knob_on(tmp_path, cache_dir):
    """Two optimizer steps from one rollout batch (steps_per_generation = 2 x the accumulation steps), with the dual
    clip, overlong shaping and refill on: one generation round set, both steps logged."""
    trainer = build_rl_trainer(tmp_path, [
        "model=tiny_llava", "rl.grpo.steps_per_generation=2", "rl.grpo.delta=10.0", "rl.overlong.buffer=2",
        "rl.refill.enabled=true", "rl.refill.max_rounds=1", "trainer.max_steps=2", "trainer.logging_steps=1",
        "trainer.save_steps=100",
    ])
    assert trainer.reward_func_names == ["correct", "overlong"]
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2]
    # one rollout batch for both steps: the refill ran (at most its cap) once, in the first step's window only
    assert [("refill_rounds" in entry) for entry in logs] == [True, False]
    assert 0.0 <= logs[0]["refill_rounds"] <= 1.0 and "rewards/overlong/mean" in logs[0]
