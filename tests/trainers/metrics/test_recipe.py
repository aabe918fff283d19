"""xmodal-imbalance on two saved tiny checkpoints and a JSONL of instances: imbalance.json and heat maps."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tests.trainers.metrics.imbalance_support import BUILDERS, collate, make_instances
from hydra import compose, initialize_config_dir
from PIL import Image
from tests.trainers.metrics.test_masks import conflict_instance

from xmodal.recipes import CONFIG_DIR
from xmodal.core.tokens import image_token_id
from xmodal.recipes.imbalance import run
from xmodal.trainers.metrics.imbalance import measure
from xmodal.trainers.metrics.imbalance_probes import probe_masks
from xmodal.trainers.models import load_for_inference


def save_checkpoint(model, processor, path):
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def checkpoints_and_instances(tmp_path) -> tuple[str, str, str]:
    """A random tiny LLaVA before and after sharpening its attention, and a JSONL of 3 QA + 1 conflict instance."""
    torch.manual_seed(0)
    model, processor = BUILDERS["llava"]()
    before = save_checkpoint(model, processor, tmp_path / "before")
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
    after = save_checkpoint(model, processor, tmp_path / "after")
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "evidence.png")
    instances = make_instances(tmp_path, 3) + [conflict_instance(tmp_path / "evidence.png")]
    with open(tmp_path / "instances.jsonl", "w") as f:
        f.writelines(json.dumps(instance) + "\n" for instance in instances)
    return before, after, str(tmp_path / "instances.jsonl")


def run_recipe(tmp_path, *overrides) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "imbalance",
            overrides=[
                "model=tiny_llava",
                f"imbalance.out_dir={tmp_path / 'out'}",
                f"output_dir={tmp_path}",
                f"cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )
    with open(run(cfg)) as f:
        return json.load(f)


def test_writes_json_and_heatmaps_for_two_checkpoints(tmp_path):
    before, after, instances = checkpoints_and_instances(tmp_path)
    report = run_recipe(
        tmp_path, f"imbalance.checkpoint={before}", f"imbalance.compare={after}", f"imbalance.instances={instances}"
    )
    assert set(report["results"]) == {"checkpoint", "compare"}
    default = report["results"]["checkpoint"]["default"]
    assert default["sequences"] == 3 and default["spans"] == {"a": "image", "b": "text"}
    assert len(default["layer_x_head"]["ratio"]) == 2 and len(default["layer_x_head"]["ratio"][0]) == 4
    assert set(default["aggregate"]) == {"mass_image", "mass_text", "per_token_image", "per_token_text", "ratio", "per_token_ratio"}
    assert report["results"]["checkpoint"]["cross_modal"]["sequences"] == 1
    assert default["aggregate"]["ratio"] != report["results"]["compare"]["default"]["aggregate"]["ratio"]
    for name in ("imbalance_ratio.png", "imbalance_per_token_ratio.png"):
        assert os.path.getsize(tmp_path / "out" / name) > 10_000


def test_evidence_spans_measure_only_conflict_instances(tmp_path):
    before, _, instances = checkpoints_and_instances(tmp_path)
    report = run_recipe(
        tmp_path, f"imbalance.checkpoint={before}", f"imbalance.instances={instances}", "imbalance.spans=evidence",
        "imbalance.mode=norm", "imbalance.layers=[1]",
    )
    (condition, result), = report["results"]["checkpoint"].items()
    assert condition == "cross_modal" and result["spans"] == {"a": "image", "b": "text"}
    assert report["layers"] == [1] and result["sequences"] == 1
    # The conflict instance measured directly: its image against its text evidence piece alone (the masks are
    # checked token by token in test_masks.py), in norm mode at layer 1.
    model, processor = load_for_inference(before, "float32", "sdpa")
    with open(instances) as f:
        conflict = [json.loads(line) for line in f][-1]
    batch = collate([conflict], processor)
    masks = probe_masks(batch, image_token_id(model.config), processor.tokenizer.all_special_ids, spans="evidence",
                        instances=[conflict], tokenizer=processor.tokenizer)
    direct = measure(model, batch, masks.query, masks.a, masks.b, layers=[1], mode="norm").mean()
    assert result["aggregate"]["ratio"] == pytest.approx(direct.ratio.mean().item(), rel=1e-5)
    assert result["aggregate"]["mass_text"] == pytest.approx(direct.mass_b.mean().item(), rel=1e-5)
