"""Fault injection: SIGKILL a training run at random moments (and while a checkpoint is being written), resume it
with `resume=true` until it finishes, and check it ends exactly where an uninterrupted run does.

Judged per scenario: every step's `loss`, `grad_norm`, `learning_rate` and `lm_loss` equal the uninterrupted
run's to 1e-6 relative, `metrics.jsonl` holds each step exactly once, and the final weights are the same.
The kill moments come from a seeded generator; where exactly a kill lands still depends on timing, which is
the point: a run must be resumable from wherever it dies.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.support.helpers import FAST, entry_point_env, read_metrics, train_command, xmodal_train
from xmodal.trainers.lifecycle.checkpoints import COMPLETE_MARKER

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
STEP_KEYS = ("loss", "grad_norm", "learning_rate", "lm_loss")
MAX_STEPS = 8
COMMON = [*FAST, f"trainer.max_steps={MAX_STEPS}", "trainer.save_steps=2", "trainer.save_total_limit=null"]


def _logged_steps(output_dir) -> list[int]:
    path = os.path.join(output_dir, "metrics.jsonl")
    return [row["step"] for row in read_metrics(str(output_dir)) if "loss" in row] if os.path.exists(path) else []


def _complete_steps(output_dir) -> list[int]:
    """Steps of the checkpoints a resume may start from."""
    return sorted(
        int(name.split("-")[1])
        for name in os.listdir(output_dir)
        if name.startswith("checkpoint-") and os.path.exists(os.path.join(output_dir, name, COMPLETE_MARKER))
    )


def mid_checkpoint_write(step: int):
    """Kill as soon as `checkpoint-<step>/` appears: the Trainer is writing into it."""
    return lambda output_dir, launched_at: os.path.isdir(os.path.join(output_dir, f"checkpoint-{step}"))


def after_step(step: int, delay: float):
    """Kill `delay` seconds after this run logs step `step` (landing mid-step, mid-save or between steps)."""
    logged_at = {}

    def due(output_dir, launched_at) -> bool:
        metrics = os.path.join(output_dir, "metrics.jsonl")
        # Rows of a previous attempt stay until the resumed run drops them (rewriting the file) at its start.
        if "time" not in logged_at and os.path.exists(metrics) and os.path.getmtime(metrics) >= launched_at:
            try:
                if step in _logged_steps(output_dir):
                    logged_at["time"] = time.monotonic()
            except ValueError:  # a line being appended right now
                pass
        return "time" in logged_at and time.monotonic() - logged_at["time"] >= delay

    return due


def run_until_killed(args: list[str], processes: int, cache_dir: str, due) -> bool:
    """Start a run and SIGKILL its whole process group once `due(output_dir, launch time)`; False if it finished first."""
    output_dir = next(arg.split("=", 1)[1] for arg in args if arg.startswith("output_dir="))
    launched_at = time.time()
    process = subprocess.Popen(
        train_command(args, processes),
        env=entry_point_env(cache_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # torchrun and its ranks in one process group, killed together
    )
    try:
        while process.poll() is None:
            if due(output_dir, launched_at):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.002)
        assert process.returncode == 0, f"the run failed before the kill (exit {process.returncode})"
        return False
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _assert_same_run(resumed, uninterrupted):
    rows = [row for row in read_metrics(str(resumed)) if "loss" in row]
    steps = [row["step"] for row in rows]
    assert steps == list(range(1, MAX_STEPS + 1)), f"each step exactly once, in order: {steps}"
    expected = {row["step"]: row for row in read_metrics(str(uninterrupted)) if "loss" in row}
    for row in rows:
        for key in STEP_KEYS:
            assert row[key] == pytest.approx(expected[row["step"]][key], rel=1e-6), (row["step"], key)
    final, final_resumed = (load_file(os.path.join(run, "final", "model.safetensors")) for run in (uninterrupted, resumed))
    assert final.keys() == final_resumed.keys()
    for name in final:
        torch.testing.assert_close(final_resumed[name], final[name], rtol=1e-6, atol=1e-7, msg=name)


SCENARIOS = {
    # name: (overrides, processes, kills in order); each kill is followed by `resume=true` on the same directory.
    "zero2_lora": (["deepspeed=zero2", "finetune=lora"], 2, "mid_checkpoint_write,random"),
    "zero3_full": (["deepspeed=zero3"], 2, "random"),
    "single_process_full": ([], 1, "mid_checkpoint_write,random,random"),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(scenario, tmp_path, cache_dir):
    overrides, processes, kills = SCENARIOS[scenario]
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    xmodal_train([*COMMON, *overrides, f"output_dir={uninterrupted}"], cache_dir, processes=processes)

    moments = random.Random(f"{scenario}-kills")
    resume = "resume=false"
    for kill in kills.split(","):
        resumed_from = max(_complete_steps(killed), default=0) if killed.exists() else 0
        if kill == "mid_checkpoint_write":
            save_step = max(resumed_from, 2) + 2  # the second save: the first one is complete
            assert not (killed / f"checkpoint-{save_step}").exists()
            due = mid_checkpoint_write(save_step)
        else:
            # After the first checkpoint is complete, so that there is always one to resume from.
            due = after_step(moments.randint(max(resumed_from + 1, 3), MAX_STEPS - 1), delay=moments.uniform(0.0, 0.3))
        run_until_killed([*COMMON, *overrides, f"output_dir={killed}", resume], processes, cache_dir, due)
        # Whether a kill aimed at a save lands inside it depends on the machine's load (the save may finish between
        # two polls); what must hold wherever it lands: a complete checkpoint to resume from, and the end result.
        assert _complete_steps(killed), "no complete checkpoint survived the kill"
        resume = "resume=true"
    xmodal_train([*COMMON, *overrides, f"output_dir={killed}", "resume=true"], cache_dir, processes=processes)
    assert all((killed / name / COMPLETE_MARKER).exists() for name in os.listdir(killed) if name.startswith("checkpoint-"))
    _assert_same_run(killed, uninterrupted)
