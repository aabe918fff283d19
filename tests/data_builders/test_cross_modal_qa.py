"""builder=cross_modal_qa: paper 1's downstream proxy, facts split between the image and the text."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from xmodal.core.errors import ConfigError
from xmodal.data_builders.builders import CrossModalQABuilder
from xmodal.data_builders.render import render_cells
from xmodal.data_builders.sources import SyntheticFactsSource


def test_each_record_asks_the_image_the_text_and_both(tmp_path):
    source = SyntheticFactsSource(num_records=20, seed=5, cache_dir=str(tmp_path))
    records = {r["id"]: r for r in source.records()}
    instances = CrossModalQABuilder().build(source, seed=0)
    sums_checked = 0
    assert Counter(i["condition"] for i in instances) == {f"cross_modal_qa_{k}": 20 for k in ("image", "text", "both")}
    for instance in instances:
        meta = instance["meta"]
        assert meta["in_image"] and meta["in_text"] and not set(meta["in_image"]) & set(meta["in_text"])
        prompt = instance["messages"][0]["content"][1]["text"]
        text_facts = dict(re.findall(r"([A-D]) = (\d)", prompt))
        assert sorted(text_facts) == meta["in_text"]  # the text holds exactly the text side's keys
        asked = re.findall(r"\b([A-D])\b", meta["question"])
        # the image shows the image side's cells, where the record's own values stand
        cells = {key: value for key, value in records[meta["record_id"]]["meta"]["cells"].items()}
        if instance["condition"] == "cross_modal_qa_text":
            assert asked[0] in meta["in_text"] and instance["target"] == text_facts[asked[0]]
        elif instance["condition"] == "cross_modal_qa_image":
            assert asked[0] in meta["in_image"]
            if asked[0] in cells:
                assert instance["target"] == cells[asked[0]]
        else:
            first, second = asked
            assert first in meta["in_image"] and second in meta["in_text"]
            glyphs = [cells.get(key) if key in meta["in_image"] else None for key in "ABCD"]
            if first in cells and all(key in cells for key in meta["in_image"]):
                assert instance["images"] == [render_cells(glyphs, 64, root=str(tmp_path))]
                assert int(instance["target"]) == int(cells[first]) + int(text_facts[second])
                sums_checked += 1
    assert sums_checked >= 5


def test_the_proxy_needs_synthetic_facts():
    from xmodal.data_builders.sources import MixtureSource

    with pytest.raises(ConfigError, match="data=synthetic"):
        CrossModalQABuilder().build(MixtureSource({"a": SyntheticFactsSource(num_records=2)}), seed=0)
