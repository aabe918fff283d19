"""`experiment=modal_imbalance/hit` mixes modalities in every instance (arXiv 2510.02608: "explicitly combining
multiple modalities within each training instance"), and `hit_contexts_first` puts every context before the
questions."""

from __future__ import annotations

from collections import Counter

import pytest
from hydra.utils import instantiate

from tests.support.helpers import compose_config

SMALL = [f"data.sources.{name}.num_records=12" for name in ("image_qa", "text_qa", "bilingual_qa")] + [
    f"data.sources.{name}.source.num_records=12" for name in ("text_conflicts", "image_conflicts")]


def build(experiment: str, tmp_path) -> tuple[list[dict], list[dict]]:
    cfg = compose_config([f"experiment=modal_imbalance/{experiment}", "data=conflict_mixture",
                          f"cache_dir={tmp_path}", *SMALL])
    source = instantiate(cfg.data)
    return list(source.records()), instantiate(cfg.builder).build(source, seed=0)


def modalities(instance: dict) -> set[str]:
    """The modalities of the instance's instructions (an instruction with an image, or text-only)."""
    return {"image" if part["group"] == "image" else "text" for part in instance["meta"]["parts"]}


@pytest.mark.parametrize("experiment", ["hit", "hit_contexts_first"])
def test_every_instance_holds_an_image_and_a_text_instruction(experiment, tmp_path):
    records, instances = build(experiment, tmp_path)
    assert Counter(len(modalities(i)) for i in instances) == {2: len(instances)}  # no single-modality instance
    # every instruction lands in exactly one instance (the same instructions as `it`)
    assert sorted(p["id"] for i in instances for p in i["meta"]["parts"]) == sorted(r["id"] for r in records)
    for instance in instances:
        with_images = [p for p in instance["meta"]["parts"] if p["group"] == "image"]
        assert with_images and len(with_images) < len(instance["meta"]["parts"])
        assert instance["images"]  # the image instruction's images came along


def test_contexts_first_puts_every_context_before_the_questions(tmp_path):
    records, instances = build("hit_contexts_first", tmp_path)
    by_id = {r["id"]: r for r in records}
    for instance in instances:
        users = [m for m in instance["messages"] if m["role"] == "user"]
        first, later = users[0]["content"], users[1:]
        assert sum(part["type"] == "image" for part in first) == len(instance["images"])
        assert all(part["type"] == "text" for msg in later for part in msg["content"])
        # each instruction's question is asked after both contexts: the first turn ends with one question, and
        # every other instruction's question is a later turn of its own
        questions = [msg["content"][-1]["text"] for msg in users]
        assert len(questions) == len(instance["meta"]["parts"])
        for part, question in zip(instance["meta"]["parts"], questions):  # in the order of the parts
            assert question in "".join(p.get("text", "") for m in by_id[part["id"]]["messages"] for p in m["content"])

