"""xmodal-rl end to end, as a user runs it: single process and two-process DeepSpeed ZeRO-2 on CPU, the logged
metrics, resume, the Auto-loadable final model, and a rising reward on the synthetic task from the tiny base."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.support.helpers import read_metrics
from tests.support.rl import SMALL, compose_rl, xmodal_rl

# The kl recipe on the tiny base: paired prompts, rollouts from the text-centric view, alignment on.
KL_RUN = [*SMALL, "experiment=modality_gap_rl/kl", "trainer.logging_steps=1"]
PER_STEP = ("reward", "rewards/correct/mean", "full_reward", "groups_kept", "completions/mean_length")


def logged(output_dir: str, key: str) -> list[float]:
    return [row[key] for row in read_metrics(output_dir) if key in row]


@pytest.mark.slow
def test_single_process_logs_rl_and_imbalance_metrics_resumes_and_saves_an_auto_loadable_model(tmp_path, cache_dir):
    out = str(tmp_path / "run")
    imbalance = ["metrics=imbalance", "metrics.imbalance.every_n_steps=2", "metrics.imbalance.probe_size=4"]
    xmodal_rl([*KL_RUN, *imbalance, "trainer.max_steps=4", "trainer.save_steps=2", f"output_dir={out}"], cache_dir)
    rows = read_metrics(out)
    assert [row["step"] for row in rows if "imbalance/ratio" in row] == [2, 4]
    for key in PER_STEP:
        assert [row["step"] for row in rows if key in row] == [1, 2, 3, 4], key
    assert logged(out, "align_loss"), "no step with a full-reward rollout logged align_loss"
    assert all(value >= 0 for value in logged(out, "align_loss"))  # k3 is non-negative
    assert os.path.exists(os.path.join(out, "checkpoint-4", "xmodal_checkpoint_complete"))

    model = AutoModelForImageTextToText.from_pretrained(os.path.join(out, "final"))
    processor = AutoProcessor.from_pretrained(os.path.join(out, "final"))
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids(processor.image_token)

    # Resume from checkpoint-4 and continue to step 6: the trainer state comes from the checkpoint.
    xmodal_rl([*KL_RUN, "trainer.max_steps=6", "trainer.save_steps=2", f"output_dir={out}", "resume=true"], cache_dir)
    assert [row["step"] for row in read_metrics(out) if "reward" in row] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_zero2_logs_reward_and_align_loss(tmp_path, cache_dir):
    out = str(tmp_path / "zero2")
    # Per rank: 8 rollouts = 2 prompts x 4; the generation batch of both ranks holds 4 groups.
    xmodal_rl([*KL_RUN, "deepspeed=zero2", "trainer.max_steps=3", f"output_dir={out}"], cache_dir, processes=2)
    assert [row["step"] for row in read_metrics(out) if "reward" in row] == [1, 2, 3]
    assert logged(out, "align_loss")
    assert AutoModelForImageTextToText.from_pretrained(os.path.join(out, "final"))


@pytest.mark.slow
def test_mean_reward_rises_on_the_synthetic_task_from_the_tiny_base(tmp_path, cache_dir):
    out = str(tmp_path / "default")
    cfg = compose_rl([])
    steps, log_every = cfg.trainer.max_steps, cfg.trainer.logging_steps
    xmodal_rl([f"output_dir={out}"], cache_dir)  # the embedded default, as the README runs it
    rewards = logged(out, "reward")
    assert len(rewards) == steps // log_every
    first, last = rewards[: len(rewards) // 3], rewards[-(len(rewards) // 3) :]
    assert sum(last) / len(last) > sum(first) / len(first) + 0.1, rewards
    assert torch.tensor(rewards).isfinite().all()
