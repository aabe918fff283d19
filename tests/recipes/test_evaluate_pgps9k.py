"""`xmodal-eval data=pgps9k data.split=test builder=paired` on a tiny checkpoint trained on the train split:
per-condition accuracy with confidence intervals and the modality gap, over the whole test split."""

from __future__ import annotations

import json
import os
import sys

import pytest

from xmodal.core.scoring import answers_match

from tests.support.helpers import PGPS9K_SAMPLE, run_entry_point, xmodal_train


@pytest.fixture
def release(tmp_path):
    """A PGPS9K release folder from the real sample: 24 problems in train.json, the next 6 in test.json."""
    if not os.path.isdir(PGPS9K_SAMPLE):
        pytest.skip(f"PGPS9K sample not found at {PGPS9K_SAMPLE} (set XMODAL_PGPS9K_SAMPLE)")
    with open(os.path.join(PGPS9K_SAMPLE, "train.json")) as f:
        problems = list(json.load(f).items())
    root = tmp_path / "pgps9k"
    root.mkdir()
    (root / "Diagram_Visual").symlink_to(os.path.abspath(os.path.join(PGPS9K_SAMPLE, "Diagram_Visual")))
    (root / "train.json").write_text(json.dumps(dict(problems[:24])))
    (root / "test.json").write_text(json.dumps(dict(problems[24:30])))
    return root, dict(problems[24:30])


@pytest.mark.slow
def test_pgps9k_test_split_gets_intervals_and_the_gap(release, tmp_path, cache_dir):
    root, test_problems = release
    run_dir, out = tmp_path / "run", tmp_path / "eval"
    data = ["data=pgps9k", f"data.root={root}", "builder=paired"]
    xmodal_train(["debug=fast", "model=tiny_llava", *data, "builder.emit=mix", f"output_dir={run_dir}"], cache_dir)
    xmodal_eval = os.path.join(os.path.dirname(sys.executable), "xmodal-eval")
    run_entry_point(
        [
            xmodal_eval, *data, "data.split=test", "model=tiny_llava", "evaluate.max_new_tokens=4",
            f"evaluate.checkpoints=[{run_dir / 'final'}]", f"evaluate.out_dir={out}", f"output_dir={tmp_path}",
        ],
        cache_dir,
    )
    report = json.loads((out / "eval.json").read_text())
    (result,) = report["results"]
    conditions = result["conditions"]
    assert set(conditions) == {"text_centric", "vision_centric"}
    readable = {line["record"] for line in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert readable <= {f"pgps9k/test/{key}" for key in test_problems} and len(readable) >= 4  # the whole test split
    for stats in conditions.values():
        assert stats["count"] == len(readable) and stats["answers"] == len(readable)
        low, high = stats["ci"]
        assert 0 <= low <= stats["accuracy"] <= high <= 1
    gap = result["derived"]["modality_gap"]
    accuracy = {condition: stats["accuracy"] for condition, stats in conditions.items()}
    assert gap["difference"] == pytest.approx(accuracy["text_centric"] - accuracy["vision_centric"])
    assert gap["ci"][0] <= gap["difference"] <= gap["ci"][1]
    for line in map(json.loads, (out / "predictions.jsonl").read_text().splitlines()):
        assert line["correct"] == [answers_match(answer, line["target"]) for answer in line["answers"]]
    header = (out / "results.md").read_text().splitlines()[0]
    assert header == "| checkpoint | text_centric | vision_centric | modality_gap |"
