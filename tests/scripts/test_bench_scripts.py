"""The GPU throughput benchmark runs end to end at a tiny size on CPU, every variant and knob included."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_throughput_benchmark_runs_every_variant_on_cpu(tmp_path, cache_dir):
    out = tmp_path / "throughput.json"
    command = [
        sys.executable, str(REPO / "scripts" / "bench_throughput.py"), "--preset", "tiny", "--dtype", "float32",
        "--steps", "2", "--batch", "2", "--records", "8", "--finetune", "full", "lora", "--losses", "lm_kl",
        "--metrics", "none", "imbalance", "--probe-every", "1", "--activation-checkpointing", "language_model",
        "--max-pixels", "1024", "--json", str(out),
    ]
    env = {**os.environ, "XMODAL_CACHE": cache_dir, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["setup"]["activation_checkpointing"] == ["language_model"] and report["setup"]["max_pixels"] == 1024
    variants = {(r["finetune"], r["loss"], r["metrics"]) for r in report["results"]}
    assert variants == {(f, "lm_kl", m) for f in ("full", "lora") for m in ("none", "imbalance")}
    for r in report["results"]:
        assert r["tokens_per_s"] > 0 and r["model_tflops_per_s"] > 0
        assert r["mfu"] is None  # no GPU, no peak to divide by

