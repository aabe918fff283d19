r"""Verifiable rewards for `xmodal-rl`, built from `conf/reward/*.yaml` by their `_target_` like loss terms.

A reward is a callable with TRL's reward-function signature: `reward(prompts, completions, **columns)` returns
one float in [0, 1] per completion; `columns` are the dataset's columns, one value per completion (`target`,
the reference answer, among them). The config maps a name to a component and its `weight`:

    # conf/reward/correct_format.yaml (the released recipe: 0.9 x correct + 0.1 x format)
    correct: {_target_: xmodal.losses.rewards.CorrectAnswer, weight: 0.9}
    format: {_target_: xmodal.losses.rewards.FormatMatch, weight: 0.1, pattern: '<think>.*</think>.*\\boxed\{.*\}.*'}

The run's reward is the weighted sum (GRPO normalises it within each group of rollouts); each component is
logged on its own as `rewards/<name>/mean`. A rollout has *full reward* when every component gives 1, which is
what the alignment term of `xmodal.trainers.grpo` keys on. `build_rewards` pops `weight` and names each callable after
its entry.
"""

from __future__ import annotations

import re

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from trl.rewards import get_soft_overlong_punishment

from xmodal.core.scoring import grader as grader_by_name

# The released recipe's format check: reasoning in think tags, then a boxed final answer.
RELEASED_FORMAT_PATTERN = r"<think>.*</think>.*\\boxed\{.*\}.*"


def completion_text(completion) -> str:
    """The text of one completion: TRL passes a plain string, or a conversation `[{"role": "assistant", ...}]`."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if isinstance(message.get("content"), str))


class CorrectAnswer:
    """1 when the completion's answer matches `target` by the named grader (`xmodal.core.scoring.grader`), else 0:
    `lenient` (`answers_match`: last boxed answer or last number, `tolerance` relative error for numbers,
    normalised exact match otherwise) or `release` (the released reward: last boxed answer, its grader, no
    tolerance)."""

    def __init__(self, grader: str = "lenient", tolerance: float = 0.01):
        self.correct = grader_by_name(grader, "reward", tolerance)

    def __call__(self, prompts, completions, target, **_columns) -> list[float]:
        return [
            float(self.correct(completion_text(completion), answer))
            for completion, answer in zip(completions, target, strict=True)
        ]


class FormatMatch:
    """1 when the whole completion matches `pattern` (a regular expression, `.` matching newlines), else 0."""

    def __init__(self, pattern: str = RELEASED_FORMAT_PATTERN):
        self.pattern = re.compile(pattern, re.DOTALL)

    def __call__(self, prompts, completions, **_columns) -> list[float]:
        return [float(self.pattern.fullmatch(completion_text(c).strip()) is not None) for c in completions]


OVERLONG_REWARD = "overlong"


def overlong_shaping(max_completion_length: int, buffer: int, penalty_factor: float) -> tuple | None:
    """DAPO's overlong reward shaping as (reward, weight), or None when `buffer` is 0: TRL's soft overlong
    punishment (0 up to `max_completion_length - buffer` tokens, then falling linearly to -1 at the limit), weighted
    by `penalty_factor`, named `overlong`. Its name keeps it out of "full reward" (the trainer's shaping rewards)."""
    if buffer < 0 or buffer > max_completion_length:
        raise ValueError(f"rl.overlong.buffer must be in [0, rl.grpo.max_completion_length={max_completion_length}], got {buffer}")
    if buffer == 0:
        return None
    reward = get_soft_overlong_punishment(max_completion_len=max_completion_length, soft_punish_cache=buffer)
    reward.__name__ = OVERLONG_REWARD
    return reward, float(penalty_factor)


def build_rewards(reward_cfg: DictConfig) -> tuple[list, list[float]]:
    """(reward callables named after their entries, their weights), in the config's order."""
    rewards, weights = [], []
    for name, entry in (reward_cfg or {}).items():
        if entry is None:  # `reward.format=null` drops a component
            continue
        options = OmegaConf.to_container(entry, resolve=True)
        weights.append(float(options.pop("weight", 1.0)))
        reward = instantiate(options)
        reward.__name__ = name  # TRL logs rewards/<__name__>/mean
        rewards.append(reward)
    if not rewards:
        raise ValueError("reward: no reward component configured (see conf/reward/)")
    return rewards, weights
