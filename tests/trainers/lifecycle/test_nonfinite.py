"""A NaN loss term injected through the real recipe (`_target_` below) stops the run or drops its optimizer step."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from xmodal.core.errors import ConfigError
from tests.support.helpers import FAST, entry_point_env, loss_by_step, read_metrics, train_command, xmodal_train
from xmodal.trainers.lifecycle.nonfinite import NonFiniteLossGuard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class NaNAtSteps:
    """A loss term that is 0 (on the model's graph) except at the chosen optimizer steps (1-based), where it is NaN."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)

    def __call__(self, ctx) -> torch.Tensor:
        zero = ctx.outputs.logits.sum() * 0.0
        return zero + float("nan") if ctx.global_step + 1 in self.steps else zero


def _args(output_dir, *overrides: str) -> list[str]:
    return [
        *FAST,
        "trainer.max_steps=4",
        "trainer.save_steps=1",
        "trainer.save_total_limit=null",
        f"output_dir={output_dir}",
        *overrides,
    ]


def _nan_term(steps: str) -> str:
    return f"+loss.terms.nan={{_target_:tests.trainers.lifecycle.test_nonfinite.NaNAtSteps,steps:{steps}}}"


@pytest.fixture(autouse=True)
def importable_test_term(monkeypatch):
    """The recipe imports the injected term by its `_target_`, from this checkout."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))


def _run_failing(args: list[str], cache_dir: str) -> str:
    result = subprocess.run(train_command(args), env=entry_point_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stdout[-2000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_raise_stops_at_the_step_naming_the_term(tmp_path, cache_dir):
    output = _run_failing(_args(tmp_path, _nan_term("[3]")), cache_dir)
    assert "optimizer step 3: loss term 'nan_loss' is not finite" in output
    assert sorted(loss_by_step(str(tmp_path))) == [1, 2]  # step 3 never completed
    assert not (tmp_path / "checkpoint-3").exists()


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")


def _optimizer_state(checkpoint) -> dict:
    return torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]


def _same(left: dict, right: dict) -> bool:
    """Equal nested dicts of tensors and numbers (weights, or an optimizer's per-parameter state)."""
    if left.keys() != right.keys():
        return False
    return all(
        _same(left[key], right[key])
        if isinstance(left[key], dict)
        else torch.equal(torch.as_tensor(left[key]), torch.as_tensor(right[key]))
        for key in left
    )


@pytest.mark.slow
def test_skip_drops_the_steps_without_touching_weights_or_optimizer_state(tmp_path, cache_dir):
    xmodal_train(_args(tmp_path, _nan_term("[2,3]"), "on_nonfinite_loss=skip", "max_skipped_steps=3"), cache_dir)
    after = {step: tmp_path / f"checkpoint-{step}" for step in (1, 2, 3, 4)}
    for skipped in (2, 3):
        assert _same(_weights(after[skipped]), _weights(after[1]))
        assert _same(_optimizer_state(after[skipped]), _optimizer_state(after[1]))
    assert not _same(_weights(after[4]), _weights(after[3]))
    assert not _same(_optimizer_state(after[4]), _optimizer_state(after[3]))
    rows = {row["step"]: row for row in read_metrics(str(tmp_path)) if "loss" in row}
    assert {step: row["skipped_steps"] for step, row in rows.items()} == {1: 0, 2: 1, 3: 2, 4: 2}
    # A skipped step logs no term average (its only micro-batch was not finite); the others do.
    assert sorted(step for step, row in rows.items() if "lm_loss" in row) == [1, 4]


@pytest.mark.slow
def test_skip_stops_after_max_skipped_steps_in_a_row(tmp_path, cache_dir):
    output = _run_failing(_args(tmp_path, _nan_term("[2,3]"), "on_nonfinite_loss=skip", "max_skipped_steps=2"), cache_dir)
    assert "optimizer step 3: 2 steps in a row skipped for non-finite loss terms (max_skipped_steps=2)" in output


@pytest.mark.parametrize(
    "action, max_skipped_steps, uses_deepspeed, message",
    [
        ("ignore", 5, False, "on_nonfinite_loss must be one of"),
        ("skip", 0, False, "max_skipped_steps must be at least 1"),
        ("skip", 5, True, "on_nonfinite_loss=skip does not work with DeepSpeed"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(action, max_skipped_steps, uses_deepspeed, message):
    with pytest.raises(ConfigError, match=message):
        NonFiniteLossGuard(action, max_skipped_steps, uses_deepspeed)
