"""What `xmodal-train` prints: pure YAML for `--cfg job`, only lines a user can act on (an allowlist), a closing summary.

Both run the installed command: the notices come from imports, which a fresh process makes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.support.helpers import FAST, read_metrics

XMODAL_TRAIN = os.path.join(os.path.dirname(sys.executable), "xmodal-train")
# Everything a plain CPU run may print, line by line: the recipe's own lines, the Trainer's log dicts, and progress
# bars of known names (the training bar has none). Any other line, a new library notice included, fails the test.
EXPECTED_LINES = [
    r"trainable parameters: \d+ / \d+ \([\d.]+%\)",
    r"built \w+ from config into \S+",
    r"\{'(loss|train_runtime)': .*\}",
    r"done: \d+ steps in .*",
    r"final model: +\S+",
    r"metrics: +\S+",
    r"((Tokenizing|Loading weights|Writing model shards): +)?\d+%\|[^|]*\| *\d+/\d+ \[[^\]]*\]",
]


@pytest.mark.slow
def test_cfg_job_is_pure_yaml_even_with_wandb_offline(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run([XMODAL_TRAIN, "--cfg", "job", "seed=7"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["seed"] == 7 and config["trainer"]["max_steps"] == 200 and "defaults" not in config


@pytest.mark.slow
def test_a_run_prints_no_unactionable_notice_and_ends_with_its_summary(tmp_path, cache_dir):
    out = tmp_path / "run"
    env = {**os.environ, "XMODAL_CACHE": cache_dir}
    env.pop("DS_ACCELERATOR", None)  # DeepSpeed's own guess, as on a user's CPU machine
    result = subprocess.run(
        [XMODAL_TRAIN, *FAST, "data.num_records=48", f"output_dir={out}"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = [line.replace("\x1b[A", "").strip() for line in re.split(r"[\r\n]+", result.stdout + result.stderr)]
    unexpected = [line for line in lines if line and not any(re.fullmatch(p, line) for p in EXPECTED_LINES)]
    assert not unexpected, unexpected
    last = [record for record in read_metrics(str(out)) if "lm_loss" in record][-1]
    summary = result.stdout[result.stdout.index("done: ") :].splitlines()
    assert summary[0].startswith(f"done: 4 steps in ") and summary[0].endswith(f"step 4: loss {last['loss']:.4g}, lm_loss {last['lm_loss']:.4g}")
    assert summary[1].split() == ["final", "model:", str(out / "final")]
    assert summary[2].split() == ["metrics:", str(out / "metrics.jsonl")]
