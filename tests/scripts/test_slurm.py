"""scripts/slurm/xmodal.sbatch on a real SLURM (slurmctld + slurmd on this machine, tests/support/slurm.py):
the job is preempted once at a known step, checkpoints at its signal, is requeued, resumes with resume=auto and
finishes with the losses of an uninterrupted run, each step once in metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support.helpers import FAST, entry_point_env, read_metrics, xmodal_train
from tests.support.pause import RELEASE, PAUSED, pause_override, wait_for_file
from tests.support.slurm import SlurmCluster, SlurmUnavailable
from xmodal.trainers.lifecycle.preemption import PREEMPTED_MARKER

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(REPO, "scripts", "slurm", "xmodal.sbatch")
RUN = [*FAST, "trainer.max_steps=5", "trainer.save_steps=100"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as reason:
        cluster.stop()
        pytest.skip(f"no SLURM here: {reason}")
    yield cluster
    cluster.stop()


def _job_state(slurm, job: str) -> dict[str, str]:
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", job], env=slurm.env(), capture_output=True, text=True, check=True
    ).stdout
    return dict(field.split("=", 1) for field in shown.split() if "=" in field)


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def _wait_until_done(slurm, job: str, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _job_state(slurm, job)
        if state["JobState"] in ENDED:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job} still {state['JobState']} after {timeout:.0f} s")


def _release_when_requeued(slurm, job: str, restarts: int, timeout: float = 60) -> None:
    """Wait for the job to be pending again after its `restarts`-th requeue and for the node to have cleaned up its
    previous start, then let it start two seconds from now: SLURM holds a requeued job back for a while (BeginTime,
    about two minutes), which the test does not need to sit out. Not at once: the requeue revokes the job's
    credential at a whole second, and slurmd refuses a start whose credential is from that same second ("Job
    credential revoked"), which fails the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _job_state(slurm, job)
        if state["JobState"] == "PENDING" and int(state["Restarts"]) == restarts and slurm.node_idle():
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+2"], env=slurm.env(), check=True)
            return
        assert state["JobState"] not in ENDED, state
        time.sleep(0.3)
    raise AssertionError(f"job {job} was not requeued within {timeout:.0f} s: {state}")


def _preempt_at_pause(slurm, job: str, control, command: list[str]) -> None:
    """Once the job holds its step (tests.support.pause), preempt it with `command`, then let the step finish."""
    wait_for_file(control / PAUSED, timeout=180, still_running=lambda: _job_state(slurm, job)["JobState"] not in ENDED)
    subprocess.run(command, env=slurm.env(), check=True)
    time.sleep(1)  # the signal arrives while the step is still held
    (control / RELEASE).touch()


def test_a_preempted_job_is_requeued_and_finishes_as_an_uninterrupted_run(slurm, tmp_path, cache_dir):
    """Preempted at step 3 by the time limit's `--signal` (sent at once with `scancel --signal`, as SLURM sends it
    LEAD seconds before the limit): every rank checkpoints and exits, the batch script sees PREEMPTED and requeues.

    `scontrol requeue` (what a preempting scheduler does: SIGTERM to every process, SLURM requeues) works the same
    way through the same template (docs/cluster.md ran it); it is left out here to keep the suite short."""
    uninterrupted, preempted, control = tmp_path / "uninterrupted", tmp_path / "preempted", tmp_path / "control"
    control.mkdir()
    log = tmp_path / "job.out"
    env = entry_point_env(cache_dir)
    env.update(
        slurm.env(),
        PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
        PATH=os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]]),
        # A one-node job: the template's torchrun hosts the c10d store on NodeAddr (127.0.0.1) and binds port 0
        # itself. Without PET_STANDALONE (tests/conftest.py) so that the template's own rendezvous is the one used.
        XMODAL_RDZV_PORT="0",
        OMP_NUM_THREADS="1",
    )
    env.pop("PET_STANDALONE", None)
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--output={log}", "--cpus-per-task=2", TEMPLATE, "xmodal-train", *RUN,
         f"output_dir={preempted}", pause_override(3, control)],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    xmodal_train([*RUN, f"output_dir={uninterrupted}"], cache_dir)  # while the job starts

    _preempt_at_pause(slurm, job, control, ["scancel", "--signal=USR1", job])
    _release_when_requeued(slurm, job, restarts=1)

    state = _wait_until_done(slurm, job, timeout=240)
    output = log.read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", f"{state}\n{output[-4000:]}"
    assert "start 1 " in output and "start 2 " in output, output[-4000:]
    # The batch script read the marker rank 0 wrote once checkpoint-3 was complete, and requeued.
    assert f'preempted ({{"step": 3, "checkpoint": "{preempted}/checkpoint-3"}}): requeueing' in output
    assert not (preempted / PREEMPTED_MARKER).exists()
    assert (preempted / "final" / "model.safetensors").exists()

    rows = [row for row in read_metrics(str(preempted)) if "loss" in row]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    expected = {row["step"]: row for row in read_metrics(str(uninterrupted)) if "loss" in row}
    for row in rows:
        for key in ("loss", "lm_loss", "grad_norm"):
            assert row[key] == pytest.approx(expected[row["step"]][key], rel=1e-6), (row["step"], key)
