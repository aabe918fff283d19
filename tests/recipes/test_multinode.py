"""Two torchrun "nodes" on one host (`--nnodes 2`, a c10d rendezvous on localhost, one process each) under
DeepSpeed ZeRO-2 on CPU. The test process hosts each launch's rendezvous store on a port it bound itself (port 0)
and both agents join it as clients (`is_host=false`), so no port is chosen here and bound later by another process;
rank 0's agent then binds the workers' store on port 0 too (torch shares it with the ranks). Checked: the same
losses as one node with two processes; a node lost mid-run (its agent and worker killed) stops the job, and the same
command with resume=auto continues it from the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed

from tests.support.helpers import FAST, entry_point_env, read_metrics, train_command
from tests.support.pause import RELEASE, PAUSED, pause_override, wait_for_file

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = [*FAST, "deepspeed=zero2", "trainer.max_steps=4", "trainer.save_steps=2", "trainer.per_device_train_batch_size=1"]


def _node_command(node_rank: int, rendezvous_port: int, args: list[str]) -> list[str]:
    return [
        os.path.join(os.path.dirname(sys.executable), "torchrun"),
        "--nnodes=2",
        f"--node-rank={node_rank}",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{rendezvous_port}",
        "--rdzv-conf=is_host=false",  # join the test's store; never try to host one on that port
        "--rdzv-id=two-nodes",
        "--no-python",
        "xmodal-train",
        *args,
    ]


def _rendezvous_store() -> torch.distributed.TCPStore:
    """A fresh store per launch, bound here on a free port and held until the nodes are done with it: a launch that
    ends closes its rendezvous in the store, so the resumed launch must not meet the first one's state."""
    return torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, multi_tenant=True)


def _start_nodes(args: list[str], env: dict, logs: Path, store: torch.distributed.TCPStore) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            _node_command(rank, store.port, args), env=env, stdout=open(logs / f"node{rank}.log", "a"),
            stderr=subprocess.STDOUT,
        )
        for rank in (0, 1)
    ]


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _rows(output_dir) -> dict[int, dict]:
    rows = [row for row in read_metrics(str(output_dir)) if "lm_loss" in row]
    steps = [row["step"] for row in rows]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {row["step"]: row for row in rows}


def test_two_nodes_match_one_and_a_lost_node_resumes_with_resume_auto(tmp_path, cache_dir):
    one_node, two_nodes, control = tmp_path / "one", tmp_path / "two", tmp_path / "control"
    control.mkdir()
    standalone_env = {  # the one-node reference keeps tests/conftest.py's PET_STANDALONE: its agent binds port 0
        **entry_point_env(cache_dir),
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
    }
    # The nodes join the test's store; under PET_STANDALONE each would rendezvous alone.
    env = {name: value for name, value in standalone_env.items() if name != "PET_STANDALONE"}
    args = [*RUN, f"output_dir={two_nodes}", pause_override(3, control), "resume=auto"]
    reference = subprocess.Popen(
        train_command([*RUN, f"output_dir={one_node}"], processes=2), env=standalone_env,
        stdout=open(tmp_path / "one.log", "w"), stderr=subprocess.STDOUT,
    )
    first_store = _rendezvous_store()
    nodes = _start_nodes(args, env, tmp_path, first_store)
    try:
        # Step 3 is held on rank 0 after checkpoint-2 is complete; then node 1 goes down, agent and worker.
        wait_for_file(control / PAUSED, timeout=300, still_running=lambda: all(n.poll() is None for n in nodes))
        for pid in [*_children(nodes[1].pid), nodes[1].pid]:
            os.kill(pid, signal.SIGKILL)
        (control / RELEASE).touch()
        assert nodes[0].wait(timeout=120) != 0  # node 0 stops too: its collective has lost its peer
        assert nodes[1].wait() == -signal.SIGKILL
    finally:
        for node in nodes:
            node.kill() if node.poll() is None else None
    assert sorted(_rows(two_nodes)) == [1, 2]
    assert not (two_nodes / "final").exists()

    resumed_store = _rendezvous_store()
    resumed = _start_nodes(args, env, tmp_path, resumed_store)  # the same command on both nodes
    assert [node.wait(timeout=300) for node in resumed] == [0, 0], (tmp_path / "node0.log").read_text()[-3000:]
    assert reference.wait(timeout=300) == 0, (tmp_path / "one.log").read_text()[-3000:]
    two, one = _rows(two_nodes), _rows(one_node)
    assert sorted(two) == sorted(one) == [1, 2, 3, 4]
    for step in one:
        for key in ("loss", "lm_loss", "grad_norm"):
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-5), (step, key)
    assert (two_nodes / "final" / "model.safetensors").exists()
