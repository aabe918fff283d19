"""The conflict task has no identity shortcut: agreeing pieces differ on the surface as much as conflicting ones.

An agreeing control used to show one piece twice, so "identical means agree" solved the unimodal conditions and
failed across modalities, whose pieces never look alike. Built here: every condition, every variant.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from hydra.utils import instantiate
from PIL import Image

from tests.support.helpers import compose_config


def composed(tmp_path, *overrides: str):
    """(source, builder) as `xmodal-eval builder=conflict` composes them on the synthetic task."""
    cfg = compose_config(["builder=conflict", "data.num_records=40", "data.seed=3", f"cache_dir={tmp_path}", *overrides],
                         config_name="evaluate")
    return instantiate(cfg.data), instantiate(cfg.builder)


def piece_fingerprints(instance: dict) -> list[str]:
    """Each evidence piece as shown: its text, or a digest of its image's pixels."""
    images = iter(instance["images"])
    shown = []
    for piece in instance["meta"]["evidence"]:
        if piece["modality"] == "image":
            with Image.open(next(images)) as image:
                shown.append("pixels:" + hashlib.sha256(image.convert("RGB").tobytes()).hexdigest())
        else:
            shown.append("text:" + piece["text"])
    return shown


def test_no_two_pieces_are_identical_and_the_identity_rule_scores_chance(tmp_path):
    source, builder = composed(tmp_path)
    instances = builder.build(source, seed=0)
    said_conflict: dict[str, list[bool]] = defaultdict(list)  # condition -> the rule's verdicts
    kinds = defaultdict(set)
    for instance in instances:
        first, second = piece_fingerprints(instance)
        assert first != second, instance["id"]
        condition = instance["meta"]["conflict_condition"]
        kinds[condition].add(instance["meta"]["conflict"])
        # "identical means agree": says conflict exactly where the two pieces differ
        said_conflict[(condition, instance["meta"]["conflict"])].append(first != second)
    assert set(kinds) == {"unimodal_text", "unimodal_image", "cross_modal", "cross_lingual"}
    for condition in kinds:
        recognition = sum(said_conflict[(condition, True)]) / len(said_conflict[(condition, True)])
        false_alarms = sum(said_conflict[(condition, False)]) / len(said_conflict[(condition, False)])
        assert recognition - false_alarms == 0  # discrimination of the rule: none, in every condition
    verdicts = [(said, conflict) for (_, conflict), values in said_conflict.items() for said in values]
    assert sum(said == conflict for said, conflict in verdicts) / len(verdicts) == 0.5  # accuracy: chance


def test_pieces_carry_independent_distractors_in_varied_surface_forms(tmp_path):
    source, _ = composed(tmp_path)
    qa_pieces = [record["meta"]["conflict_qa"]["pieces"] for record in source.records()]
    texts = [piece["text"] for pieces in qa_pieces for side in pieces.values() for piece in side]
    assert all(", " in text for text in texts)  # the asked fact among at least one distractor
    forms = {"is", "=", "the value of"}
    assert all(any(f" {form} " in f" {text} " for text in texts) for form in forms)
    # the supporting side's two pieces agree on the asked key and differ elsewhere
    record = next(iter(source.records()))
    qa = record["meta"]["conflict_qa"]
    for side, value in (("evidence", qa["answer"]), ("counter_evidence", qa["counter_answer"])):
        first, second = (piece["cells"]["glyphs"] for piece in qa["pieces"][side])
        assert first != second and value in first and value in second


def test_a_reading_target_gives_each_shown_piece_its_own_value_before_the_decision(tmp_path):
    reading = "Evidence 1 gives {first}, evidence 2 gives {second}. "
    source, builder = composed(tmp_path, f"conflict_reading='{reading}'", "builder.conditions=[unimodal_text]")
    judge = instantiate(compose_config([f"conflict_reading='{reading}'"], config_name="evaluate").judge)
    instances = builder.build(source, seed=0)
    for instance in instances:
        meta, target = instance["meta"], instance["messages"][-1]["content"][0]["text"]
        asked = meta["question"].removeprefix("What is the value of ").removesuffix("?")
        # each piece's value for the asked key, read off its own text ("A = 3", "A is 3", "the value of A is 3")
        values = [fact.rsplit(" ", 1)[1] for piece in meta["evidence"] for fact in piece["text"].split(", ")
                  if fact.rsplit(" ", 2)[0].removeprefix("the value of ") == asked]
        assert len(values) == 2, instance["id"]
        decision = "The sources conflict." if meta["conflict"] else f"The sources agree. {values[0]}"
        assert target == reading.format(first=values[0], second=values[1]) + decision
        assert (values[0] != values[1]) == meta["conflict"]
        assert judge(target) == meta["conflict"]
    assert {i["meta"]["conflict"] for i in instances} == {True, False}
