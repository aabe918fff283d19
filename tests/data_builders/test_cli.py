"""xmodal-data: composed from the root config like training, writes JSONL + images + summary."""

from __future__ import annotations

import json
import os
from collections import Counter
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from xmodal.recipes import instances_of
from xmodal.recipes.data import write_build
from xmodal.data_builders.sample import prompt_text

CONF = Path(__file__).resolve().parents[2] / "conf"


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def read_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# Values for the `???` fields, by field name: constructors only store them (records are read on first use).
REQUIRED_VALUES = {"path": "records.jsonl", "root": "pgps9k"}


def required_overrides(node, prefix: str) -> list[str]:
    """`key=value` overrides for every `???` field under `node` (a mixture nests them in its sources)."""
    overrides = []
    for key in node:
        if OmegaConf.is_missing(node, key):
            overrides.append(f"{prefix}.{key}={REQUIRED_VALUES[key]}")
        elif OmegaConf.is_dict(node[key]):
            overrides += required_overrides(node[key], f"{prefix}.{key}")
    return overrides


@pytest.mark.parametrize("group", ["data", "builder"])
def test_every_data_and_builder_config_composes_and_instantiates_its_target(group):
    for yaml in sorted((CONF / group).glob("*.yaml")):
        cfg = config(f"{group}={yaml.stem}")
        cfg = config(f"{group}={yaml.stem}", *required_overrides(cfg[group], group))
        component = instantiate(cfg[group])  # a misspelled constructor argument raises here
        assert type(component) is get_class(cfg[group]._target_), yaml
        first_line = yaml.read_text().splitlines()[0]
        assert first_line.startswith("# ") or first_line == "# @package _global_", yaml


def test_paired_pgps9k_writes_both_conditions_sharing_image_and_target(pgps9k_root, tmp_path):
    out = tmp_path / "out" / "paired.jsonl"
    cfg = config("data=pgps9k", f"data.root={pgps9k_root}", "builder=paired", "data.limit=20")
    summary = write_build(cfg, str(out))
    lines = read_lines(out)
    assert summary["conditions"] == {"text_centric": 20, "vision_centric": 20} and summary["lines"] == 40
    assert json.loads(Path(f"{out}.summary.json").read_text()) == summary
    pairs = {}
    for line in lines:
        pairs.setdefault(line["pair_id"], {})[line["condition"]] = line
    assert len(pairs) == 20
    for pair in pairs.values():
        text, vision = pair["text_centric"], pair["vision_centric"]
        assert text["images"] == vision["images"] and text["target"] == vision["target"]
        assert Path(text["images"][0]).parent == out.parent / "paired_images" and Path(text["images"][0]).is_file()
        assert "Facts:" in prompt_text(text) and "Facts:" not in prompt_text(vision)


def turns(line):
    """(user text, answer) pairs of a JSONL line, in order."""
    messages = line["messages"]
    return [(prompt_text({"messages": [user]}), answer["content"][0]["text"])
            for user, answer in zip(messages[::2], messages[1::2])]


def test_mixing_builders_default_to_the_mixture_and_match_instructions(tmp_path):
    sizes = ("data.sources.image.num_records=9", "data.sources.text.num_records=5")
    dataset = write_build(config("builder=dataset_mix", *sizes), str(tmp_path / "d.jsonl"))
    instance = write_build(config("builder=instance_mix", *sizes), str(tmp_path / "i.jsonl"))
    assert dataset["sources"] == {"image": 9, "text": 5} and instance["records"] == 14
    by_dataset = [t for line in read_lines(tmp_path / "d.jsonl") for t in turns(line)]
    by_instance = [t for line in read_lines(tmp_path / "i.jsonl") for t in turns(line)]
    assert sorted(by_dataset) == sorted(by_instance) and len(by_dataset) == 14
    assert all(set(line["source"].split("+")) == {"image", "text"} for line in read_lines(tmp_path / "i.jsonl"))


def test_conflict_on_synthetic_reports_balanced_counts(tmp_path):
    out = tmp_path / "conflict.jsonl"
    summary = write_build(config("builder=conflict", "data.num_records=4"), str(out))
    assert set(summary["conditions"].values()) == {16} and len(summary["conditions"]) == 8
    assert summary["instances"] == summary["lines"] == 128 and summary["dropped_by_builder"] == {}


def test_skipped_records_are_counted_in_the_summary(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    record = {"id": "r1", "image": "gone.png", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                                 {"from": "gpt", "value": "Yo"}]}
    text = {"id": "r2", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(record) + "\n" + json.dumps(text) + "\n")
    cfg = config("data=llava_instruct", f"data.path={data}", f"data.image_folder={images}", "data.on_error=skip")
    summary = write_build(cfg, str(tmp_path / "o.jsonl"))
    assert summary["records"] == 1 and summary["skipped_records"] == {"image: missing image file": 1}


@pytest.mark.timeout(120)
def test_command_line_entry_point(tmp_path):
    out = tmp_path / "mix.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "xmodal.recipes.data", "data=mixture", "builder=instance_mix",
         "data.sources.image.num_records=6", "data.sources.text.num_records=6", f"out={out}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(CONF.parent)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["conditions"] == {"instance_mix": 6}
    assert all(len(line["meta"]["groups"]) == 2 for line in read_lines(out))


def test_conflict_mixture_teaches_unimodal_conflicts_beside_qa(tmp_path):
    """data=conflict_mixture: built conflict instances join the mixture as sources; only unimodal conflicts."""
    records = [f"data.sources.{name}.num_records=4" for name in ("image_qa", "text_qa", "bilingual_qa")]
    records += [f"data.sources.{name}.source.num_records=4" for name in ("text_conflicts", "image_conflicts")]
    cfg = config("data=conflict_mixture", "builder=dataset_mix", f"cache_dir={tmp_path}", *records)
    built = instances_of(cfg).instances
    assert Counter(i["source"] for i in built) == {
        "image_qa": 4, "text_qa": 4, "bilingual_qa": 4, "text_conflicts": 8, "image_conflicts": 8
    }
    assert {i["condition"] for i in built if i["source"].endswith("conflicts")} == {
        "unimodal_text", "unimodal_text_control", "unimodal_image", "unimodal_image_control"
    }
    bilingual = [i for i in built if i["source"] == "bilingual_qa"]
    assert all(i["messages"][0]["content"][-1]["text"].split("\n")[-1].startswith("Which letter") for i in bilingual)
