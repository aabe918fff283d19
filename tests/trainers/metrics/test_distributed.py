"""The imbalance callback under torchrun with 2 CPU ranks and DeepSpeed ZeRO-2 / ZeRO-3 (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.mark.distributed
@pytest.mark.parametrize("stage, mode", [(2, "weight"), (3, "norm")])
def test_every_rank_logs_the_same_all_reduced_values(tmp_path, stage, mode):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": os.pathsep.join([HERE, ROOT])}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        os.path.join(HERE, "distributed_probe.py"), str(stage), mode, str(tmp_path),
    ]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0]["logged"] == ranks[1]["logged"]
    assert [step for step, _, _ in ranks[0]["logged"]] == [2, 4]
    assert all(sequences == 5 and 0.0 < ratio < 1.0 for _, ratio, sequences in ranks[0]["logged"])
    final_ratio = ranks[0]["logged"][-1][1]
    assert final_ratio == pytest.approx(ranks[0]["unsharded"], abs=1e-6)
