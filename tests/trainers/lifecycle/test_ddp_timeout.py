"""`trainer.ddp_timeout` reaches the process group DeepSpeed starts before the Trainer exists (the group the ranks
wait in while rank 0 builds the data). In a process of its own: the group is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # DeepSpeed imports in a process of its own: tens of seconds on shared cores
PROBE = """
import sys, torch
from torch.distributed.distributed_c10d import _get_default_group
from tests.support.helpers import compose_config
from xmodal.trainers.lifecycle.runs import start_deepspeed_backend
cfg = compose_config(["deepspeed=zero2", *sys.argv[1:]])
start_deepspeed_backend(cfg.deepspeed, cfg.trainer.ddp_timeout)
print(_get_default_group()._get_backend(torch.device("cpu")).options._timeout.total_seconds())
"""


def test_the_deepspeed_process_group_waits_ddp_timeout_seconds():
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "trainer.ddp_timeout=1234"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "1234.0"
