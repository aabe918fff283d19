"""SIGTERM/SIGINT mid-step: the step finishes, a complete checkpoint is written, the run exits PREEMPTED_EXIT_CODE,
and `resume=true` continues exactly where an uninterrupted run goes.

The signal comes from a callback inside the run (`SignalAtStep`, injected by `_target_` like any metric callback),
so it lands at a chosen moment of a chosen step on a chosen rank: a real signal, delivered deterministically.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from transformers import TrainerCallback

from tests.support.helpers import FAST, entry_point_env, read_metrics, train_command, xmodal_train
from xmodal.trainers.lifecycle.checkpoints import COMPLETE_MARKER
from xmodal.trainers.lifecycle.preemption import PREEMPTED_EXIT_CODE

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP_KEYS = ("loss", "grad_norm", "learning_rate", "lm_loss")


class SignalAtStep(TrainerCallback):
    """Sends `signal` to its own process at the start of optimizer step `step` (1-based), on rank `rank` only."""

    def __init__(self, step: int, signal: str = "SIGTERM", rank: int = 0):
        self.step, self.signal, self.rank = step, signal, rank

    def bind(self, trainer) -> None:  # the recipe binds every metric callback to its trainer
        pass

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step and args.process_index == self.rank:
            os.kill(os.getpid(), getattr(signal, self.signal))


@pytest.fixture(autouse=True)
def importable_test_callback(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))


def _signal_at(step: int, signal_name: str, rank: int = 0) -> str:
    callback = f"_target_:tests.trainers.lifecycle.test_preemption.SignalAtStep,step:{step},signal:{signal_name},rank:{rank}"
    return f"+metrics.preempt={{{callback}}}"


def _rows_by_step(output_dir) -> dict[int, dict]:
    rows = [row for row in read_metrics(str(output_dir)) if "loss" in row]
    steps = [row["step"] for row in rows]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {row["step"]: row for row in rows}


def _assert_continues_exactly(resumed, uninterrupted, after: int, until: int):
    rows, expected = _rows_by_step(resumed), _rows_by_step(uninterrupted)
    assert sorted(rows) == list(range(1, until + 1))
    for step in range(after + 1, until + 1):
        for key in STEP_KEYS:
            assert rows[step][key] == pytest.approx(expected[step][key], rel=1e-6), (step, key)


SINGLE = [*FAST, "trainer.max_steps=6", "trainer.save_steps=100"]


@pytest.fixture(scope="module")
def uninterrupted_single(tmp_path_factory, cache_dir):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    xmodal_train([*SINGLE, f"output_dir={output_dir}"], cache_dir)
    return output_dir


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_mid_step_checkpoints_exits_preempted_and_resumes_exactly(
    signal_name, uninterrupted_single, tmp_path, cache_dir
):
    common, uninterrupted, preempted = SINGLE, uninterrupted_single, tmp_path / "preempted"

    args = [*common, f"output_dir={preempted}"]
    result = subprocess.run(
        train_command([*args, _signal_at(3, signal_name)]),
        env=entry_point_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == PREEMPTED_EXIT_CODE, result.stderr[-3000:]
    assert "preempted" in result.stdout + result.stderr
    # Step 3 was running when the signal came: it finished and was checkpointed; nothing after it ran.
    assert (preempted / "checkpoint-3" / COMPLETE_MARKER).exists()
    assert not (preempted / "final").exists()
    assert sorted(_rows_by_step(preempted)) == [1, 2, 3]

    xmodal_train([*args, "resume=true"], cache_dir)
    _assert_continues_exactly(preempted, uninterrupted, after=3, until=6)


@pytest.mark.distributed
def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, cache_dir):
    """ZeRO-3 LoRA: also the one setting whose resume DeepSpeed restores non-strictly, and whose final/ merge hung."""
    common = [*FAST, "deepspeed=zero3", "finetune=lora", "trainer.max_steps=5", "trainer.save_steps=100"]
    uninterrupted, preempted = tmp_path / "uninterrupted", tmp_path / "preempted"
    xmodal_train([*common, f"output_dir={uninterrupted}"], cache_dir, processes=2)

    args = [*common, f"output_dir={preempted}"]
    result = subprocess.run(
        train_command([*args, _signal_at(2, "SIGTERM", rank=1)], processes=2),
        env=entry_point_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    # Each rank exits PREEMPTED_EXIT_CODE; torchrun reports any non-zero worker status as its own failure.
    assert result.returncode != 0
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in result.stdout + result.stderr
    assert (preempted / "checkpoint-2" / COMPLETE_MARKER).exists()

    xmodal_train([*args, "resume=true"], cache_dir, processes=2)
    _assert_continues_exactly(preempted, uninterrupted, after=2, until=5)
    assert (preempted / "final" / "model.safetensors").exists()
