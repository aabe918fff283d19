"""Rewards, the group filter and the RL configs: small pure checks (the full-reward rows: test_alignment_math.py)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from xmodal.core.errors import ConfigError
from xmodal.data_builders.rollout_prompts import rollout_rows
from xmodal.recipes.rl import check_alignment_data
from tests.support.rl import compose_rl
from xmodal.losses.alignment import RolloutAlignment
from xmodal.trainers.grpo import varied_reward_groups
from xmodal.losses.rewards import CorrectAnswer, FormatMatch, build_rewards

RELEASED_STYLE = "<think>AB = 3, so x = 2 * 3.</think> The answer is \\boxed{6}."


def as_conversation(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_correct_answer_scores_each_completion_against_its_target():
    reward = CorrectAnswer()
    completions = [as_conversation(RELEASED_STYLE), as_conversation("\\boxed{6.05}"), " 7", "no answer"]
    assert reward(None, completions, target=["6", "6", "7", "7"]) == [1.0, 1.0, 1.0, 0.0]
    assert CorrectAnswer(tolerance=0.0)(None, [" \\boxed{6.05}"], target=["6"]) == [0.0]


def test_format_reward_is_the_released_pattern_on_the_whole_completion():
    reward = FormatMatch()
    assert reward(None, [RELEASED_STYLE, "\\boxed{6}", "<think>x</think> 6", "<think>a</think>\n\\boxed{1}\n"]) == [
        1.0, 0.0, 0.0, 1.0,
    ]


def test_released_reward_weights_and_names():
    cfg = compose_rl(["reward=correct_format"])
    rewards, weights = build_rewards(cfg.reward)
    assert [r.__name__ for r in rewards] == ["correct", "format"] and weights == [0.9, 0.1]
    with pytest.raises(ValueError, match="no reward"):
        build_rewards(OmegaConf.create({"correct": None}))


def test_group_filter_keeps_groups_whose_rewards_differ():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.9, 0.9, 0.0, 0.0, 0.0, 0.1, 1.0, 0.1])
    assert varied_reward_groups(rewards, 4).tolist() == [True, True, True]
    assert varied_reward_groups(rewards, 3).tolist() == [False, True, False, True]


@pytest.mark.parametrize(
    "experiment,emit,weight",
    [("full_text", "text_centric", 0.0), ("no_text", "vision_centric", 0.0), ("mix", "mix", 0.0),
     ("curriculum", "vision_centric", 0.0), ("kl", "both", 0.01), ("kl_curriculum", "vision_centric", 0.0)],
)
def test_rl_experiments_compose_as_released(experiment, emit, weight):
    cfg = compose_rl([f"experiment=modality_gap_rl/{experiment}"])
    assert cfg.builder.emit == emit and cfg.rl.align.weight == weight
    assert cfg.rl.grpo.loss_type == "dapo" and cfg.rl.filter_equal_reward_groups
    stage_one = {"curriculum": "full_text", "kl_curriculum": "kl"}.get(experiment)
    if stage_one:  # stage two starts from the model stage one publishes
        assert cfg.model.path == f"{compose_rl([f'experiment=modality_gap_rl/{stage_one}']).output_dir}/final"


def test_alignment_without_paired_prompts_is_refused():
    rows = rollout_rows([{"id": "a", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "7"}]}], "images": [], "target": "7"}])
    assert rows[0]["vision_prompt"] is None and rows[0]["prompt"][-1]["role"] == "user"
    with pytest.raises(ConfigError, match="builder=paired builder.emit=both"):
        check_alignment_data(RolloutAlignment(weight=0.01), {"vision_prompt": [None]})
    check_alignment_data(RolloutAlignment(weight=0.0), {"vision_prompt": [None]})
