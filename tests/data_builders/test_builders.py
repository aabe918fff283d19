"""Builders: paired views, curriculum schedule, matched instance/dataset mixing, balanced conflict sets."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from tests.data_builders.record_files import write_records

from xmodal.data_builders.builders import (
    ConflictBuilder,
    CurriculumBuilder,
    DatasetMixBuilder,
    InstanceMixBuilder,
    PairedBuilder,
    SingleBuilder,
)
from xmodal.core.errors import ConfigError, DataError
from xmodal.data_builders.builders.conflict import SLOTS
from xmodal.data_builders.render import render_cells, render_text
from xmodal.data_builders.sample import check_sample, prompt_text
from xmodal.data_builders.sources import ConflictQASource, MixtureSource, Pgps9kSource, SyntheticFactsSource
from xmodal.data_builders.sources.synthetic import DEFAULT_LANGUAGES


def synthetic(num_records=12, **kwargs):
    return SyntheticFactsSource(num_records=num_records, **kwargs)


def test_single_keeps_every_record_once_shuffled_by_seed():
    source = synthetic()
    built = SingleBuilder().build(source, seed=1)
    assert sorted(i["id"] for i in built) == sorted(r["id"] for r in source.records())
    assert [i["id"] for i in built] == [i["id"] for i in SingleBuilder().build(source, seed=1)]
    assert [i["id"] for i in built] != [i["id"] for i in SingleBuilder().build(source, seed=2)]


def test_paired_pgps9k_text_centric_states_clauses_vision_centric_does_not(pgps9k_root):
    source = Pgps9kSource(str(pgps9k_root), on_error="skip")
    built = PairedBuilder(emit="both").build(source, seed=0)
    assert len(built) == len(source.records())
    record = {r["id"]: r for r in source.records()}
    for instance in built:
        check_sample(instance)
        teacher, facts = instance["teacher"], record[instance["meta"]["pair_id"]]["meta"]["facts"]
        assert (instance["condition"], teacher["condition"]) == ("vision_centric", "text_centric")
        assert teacher["images"] == instance["images"] and len(instance["images"]) == 1
        assert teacher["messages"][-1] == instance["messages"][-1]  # same target turn
        question = record[instance["meta"]["pair_id"]]["meta"]["question"]
        assert all(fact in prompt_text(teacher) for fact in facts)
        assert not any(fact in prompt_text(instance) for fact in facts if fact not in question)
        assert "facts" not in instance["meta"]
    prob_0 = next(i for i in built if i["meta"]["pair_id"] == "pgps9k/train/prob_0")
    assert prompt_text(prob_0["teacher"]).startswith("Facts:\nB is on line AC.\nEA is a line segment.\n")
    assert prompt_text(prob_0) == "Find the area of the figure."


@pytest.mark.parametrize("emit, conditions", [("text_centric", {"text_centric": 12}),
                                              ("vision_centric", {"vision_centric": 12}),
                                              ("mix", {"text_centric": 12, "vision_centric": 12})])
def test_paired_emits_either_condition_or_a_one_to_one_mix(emit, conditions):
    built = PairedBuilder(emit=emit).build(synthetic(), seed=0)
    assert Counter(i["condition"] for i in built) == conditions
    assert not any("teacher" in i for i in built)
    assert len({i["id"] for i in built}) == len(built)


def test_curriculum_schedule_is_as_long_as_a_step_based_run():
    # 12 records, 7 steps x 4 examples = 28 instances: 2 full reshuffled passes and 4 of a third.
    builder = CurriculumBuilder(switch_step=5, max_steps=7)
    built = builder.build(synthetic(), seed=0, examples_per_step=4)
    assert builder.ordered
    assert [i["condition"] for i in built] == ["text_centric"] * 20 + ["vision_centric"] * 8
    assert Counter(i["meta"]["pass"] for i in built) == {0: 12, 1: 12, 2: 4}
    for number in (0, 1):  # every record once per full pass
        assert len({i["meta"]["pair_id"] for i in built if i["meta"]["pass"] == number}) == 12
    by_fraction = CurriculumBuilder(switch_fraction=0.25, max_steps=10).build(synthetic(), seed=0, examples_per_step=2)
    assert [i["condition"] for i in by_fraction] == ["text_centric"] * 5 + ["vision_centric"] * 15


def test_curriculum_epoch_based_run_is_one_epoch_of_the_passes():
    built = CurriculumBuilder(switch_fraction=0.25, passes=2, max_steps=-1, num_train_epochs=1).build(synthetic(), seed=0)
    assert [i["condition"] for i in built] == ["text_centric"] * 6 + ["vision_centric"] * 18


SWITCH_OUTSIDE = ("the curriculum switch must fall inside the run: {setting}, but the run reads {total} instances "
                  "({length}). Move the switch (builder.switch_step / builder.switch_fraction) or lengthen the run")
EPOCHS = ("a curriculum schedule is read once: trainer.num_train_epochs is {epochs}, and every further epoch would "
          "replay the text-centric part. Set trainer.num_train_epochs=1 with builder.passes=N for N passes over the "
          "records, or set trainer.max_steps")


@pytest.mark.parametrize("settings,examples_per_step,message", [
    # The run ends before the switch (a silent text-centric-only run before).
    ({"switch_step": 10, "max_steps": 10}, 4, SWITCH_OUTSIDE.format(
        setting="builder.switch_step=10 (instance 40)", total=40, length="trainer.max_steps=10 x 4 examples per step")),
    ({"switch_step": 12, "max_steps": 10}, 1, SWITCH_OUTSIDE.format(
        setting="builder.switch_step=12 (instance 12)", total=10, length="trainer.max_steps=10 x 1 examples per step")),
    ({"switch_step": 0, "max_steps": 10}, 1, SWITCH_OUTSIDE.format(  # no text-centric instance
        setting="builder.switch_step=0 (instance 0)", total=10, length="trainer.max_steps=10 x 1 examples per step")),
    # A fraction that rounds to no vision-centric (or no text-centric) instance at all.
    ({"switch_fraction": 0.9, "max_steps": 1}, 2, SWITCH_OUTSIDE.format(
        setting="builder.switch_fraction=0.9 (instance 2)", total=2, length="trainer.max_steps=1 x 2 examples per step")),
    ({"switch_fraction": 0.01, "max_steps": -1, "num_train_epochs": 1}, 1, SWITCH_OUTSIDE.format(
        setting="builder.switch_fraction=0.01 (instance 0)", total=12, length="one epoch of builder.passes=1 x 12 records")),
    # Several epochs would replay the text-centric part; HF's default is 3 epochs.
    ({"max_steps": -1, "num_train_epochs": 2}, 1, EPOCHS.format(epochs=2)),
    ({"max_steps": -1}, 1, EPOCHS.format(epochs="unset (HF's default is 3)")),
    # `passes` would be ignored by a step-based run.
    ({"max_steps": 10, "passes": 2}, 1, "builder.passes=2 applies to epoch-based runs; this run has trainer.max_steps=10, "
     "whose length sets the schedule: drop builder.passes, or set trainer.max_steps=-1 trainer.num_train_epochs=1 to "
     "train on builder.passes passes"),
])
def test_curriculum_schedule_the_run_cannot_honour_fails_with_the_fix(settings, examples_per_step, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        CurriculumBuilder(**settings).build(synthetic(), seed=0, examples_per_step=examples_per_step)


def test_curriculum_switch_may_fall_on_the_first_or_the_last_instance():
    # one text-centric instance, then one vision-centric; build's default is one example per step
    first = CurriculumBuilder(switch_step=1, max_steps=3).build(synthetic(), seed=0)
    assert [i["condition"] for i in first] == ["text_centric"] + ["vision_centric"] * 2
    last = CurriculumBuilder(switch_step=2, max_steps=3).build(synthetic(), seed=0)
    assert [i["condition"] for i in last] == ["text_centric"] * 2 + ["vision_centric"]


def test_curriculum_by_default_switches_halfway_and_states_the_facts_one_a_line():
    source = synthetic(6)
    records = {record["id"]: record for record in source.records()}
    built = CurriculumBuilder(max_steps=4).build(source, seed=0, examples_per_step=2)
    assert [i["condition"] for i in built] == ["text_centric"] * 4 + ["vision_centric"] * 4
    for instance in built:
        meta = records[instance["meta"]["pair_id"]]["meta"]
        facts = "Facts:\n" + "\n".join(meta["facts"]) + "\n" if instance["condition"] == "text_centric" else ""
        assert prompt_text(instance) == facts + meta["question"]
        assert instance["id"] == f"{instance['meta']['pair_id']}:{instance['condition']}:pass{instance['meta']['pass']}"


def test_curriculum_passes_are_reshuffled_by_the_seed():
    source = synthetic(6)

    def order(seed):
        return [i["meta"]["pair_id"] for i in CurriculumBuilder(max_steps=6).build(source, seed=seed, examples_per_step=2)]

    first = order(0)
    assert first == order(0) != order(1)
    assert sorted(first[:6]) == sorted(first[6:]) == sorted(records["id"] for records in source.records())
    assert first[:6] != first[6:]  # the second pass is drawn again, not the first repeated


def test_curriculum_epoch_based_run_without_passes_is_one_pass_and_max_steps_0_is_epoch_based():
    built = CurriculumBuilder(max_steps=0, num_train_epochs=1).build(synthetic(6), seed=0)
    assert [i["condition"] for i in built] == ["text_centric"] * 3 + ["vision_centric"] * 3
    assert len({i["meta"]["pair_id"] for i in built}) == 6


@pytest.mark.parametrize("settings, message", [
    ({"switch_fraction": 0.0}, "builder.switch_fraction must lie strictly between 0 and 1, got 0.0"),
    ({"switch_fraction": 1.0}, "builder.switch_fraction must lie strictly between 0 and 1, got 1.0"),
    ({"passes": 0}, "builder.passes must be >= 1, got 0"),
])
def test_curriculum_settings_out_of_range_are_refused_naming_them(settings, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        CurriculumBuilder(**settings)
    CurriculumBuilder(switch_step=3, switch_fraction=1.0, passes=1)  # a switch step overrides the fraction


def mixture():
    return MixtureSource({
        "image": synthetic(10),
        "text": synthetic(7, facts_in="text", name="synthetic_text"),
        "other": synthetic(5, language="xx", second_language="en", name="synthetic_xx"),
    })


def instructions(instances):
    """The multiset of source instructions (by id) the instances contain."""
    items = Counter()
    for instance in instances:
        for part in instance["meta"].get("parts") or [instance]:
            items[part["id"]] += 1
    return items


@pytest.mark.parametrize("k, ratios, num", [(2, None, None), (3, None, None), (2, {"image": 2, "text": 1}, 12)])
def test_instance_and_dataset_mix_use_the_same_instructions(k, ratios, num):
    source = mixture()
    by_dataset = DatasetMixBuilder(ratios=ratios, num_instructions=num).build(source, seed=5)
    by_instance = InstanceMixBuilder(k=k, ratios=ratios, num_instructions=num).build(source, seed=5)
    assert instructions(by_instance) == instructions(by_dataset)
    assert all(n == 1 for n in instructions(by_dataset).values())
    for instance in by_instance:
        check_sample(instance)
        assert len(instance["meta"]["groups"]) >= 2
        with_images = sum(p["id"].startswith(("image/", "other/")) for p in instance["meta"]["parts"])
        assert len(instance["images"]) == with_images
        turns = [m for m in instance["messages"] if m["role"] == "assistant"]
        assert [m["content"][0]["text"] for m in turns] == [p["target"] for p in instance["meta"]["parts"]]
    if ratios:
        assert Counter(p.split("/")[0] for p in instructions(by_dataset)) == {"image": 8, "text": 4}


def test_instance_mix_by_modality_and_supervision():
    built = InstanceMixBuilder(k=2, group_by="modality", supervise="last").build(mixture(), seed=0)
    for instance in built:
        kinds = {"image" if p["id"].startswith(("image/", "other/")) else "text" for p in instance["meta"]["parts"]}
        assert kinds == {"image", "text"}
        trained = [m.get("train", True) for m in instance["messages"] if m["role"] == "assistant"]
        assert trained == [False] * (len(trained) - 1) + [True]


def test_instance_mix_needs_two_groups():
    with pytest.raises(ValueError, match=r"two or more sources, got \['synthetic'\]; use a mixture source "
                                         r"\(data=mixture\) or group_by=modality"):
        InstanceMixBuilder().build(synthetic(), seed=0)


def test_conflict_conditions_and_controls_are_balanced():
    builder = ConflictBuilder()
    built = builder.build(synthetic(6), seed=0)
    conditions = ["unimodal_text", "unimodal_image", "cross_modal", "cross_lingual"]
    assert Counter(i["condition"] for i in built) == {c + s: 24 for c in conditions for s in ("", "_control")}
    for condition, (first, second) in zip(conditions, [("text_a", "text_b"), ("image_a", "image_b"),
                                                       ("text", "image"), ("l1", "l2")]):
        orders = [[first, second], [second, first]]
        conflicts = [i["meta"] for i in built if i["condition"] == condition]
        controls = [i["meta"] for i in built if i["condition"] == condition + "_control"]
        assert all(m["conflict"] for m in conflicts) and not any(m["conflict"] for m in controls)
        # 6 records x (true side x order), and 6 x (agreed answer x order): every cell equally often
        assert Counter((m["true_side"], *m["order"]) for m in conflicts) == {
            (side, *order): 6 for side in (first, second) for order in orders
        }
        assert Counter((m["agree_on"], *m["order"]) for m in controls) == {
            (agree, *order): 6 for agree in ("answer", "counter") for order in orders
        }
    for instance in built:
        check_sample(instance)
        evidence, meta = instance["meta"]["evidence"], instance["meta"]
        parts = instance["messages"][0]["content"]
        assert len(instance["images"]) == sum(e["modality"] == "image" for e in evidence)
        for piece in evidence:
            shown = parts[piece["part_index"]]
            expected = {"type": "text", "text": piece["text"]} if piece["modality"] == "text" else {"type": "image"}
            assert shown == expected
        supports = {e["supports"] for e in evidence}
        assert (len(supports) == 2) == meta["conflict"]
        agreed = meta["answer"] if supports == {"answer"} else meta["counter_answer"]
        assert instance["target"] == ("The sources conflict." if meta["conflict"] else f"The sources agree. {agreed}")
    cross_modal = [i for i in built if i["condition"] == "cross_modal"]
    orders = {tuple(e["modality"] for e in i["meta"]["evidence"]) for i in cross_modal}
    assert orders == {("text", "image"), ("image", "text")}
    lingual = next(i for i in built if i["condition"] == "cross_lingual")
    assert {e["language"] for e in lingual["meta"]["evidence"]} == {"l1", "l2"}


def test_conflict_rotate_and_missing_second_language(tmp_path):
    record = {"question": "Capital of X?", "answer": "Ay", "counter_answer": "Bee",
              "evidence": "X's capital is Ay.", "counter_evidence": "X's capital is Bee."}
    records = [{**record, "id": f"q{n}"} for n in range(8)]
    records[0].update(evidence_l2="La capitale de X est Ay.", counter_evidence_l2="La capitale de X est Bee.")
    records[1].update(evidence_l2="La capitale de X est Ay.")  # one side in the second language is not enough
    source = ConflictQASource(str(write_records(tmp_path / "c.jsonl", records)))
    builder = ConflictBuilder(variants="rotate", render={"width": 128, "height": 64, "font_size": 12})
    built = builder.build(source, seed=0)
    assert builder.dropped == {"cross_lingual: no second-language evidence": 7}
    unimodal = [i for i in built if i["condition"] == "unimodal_text"]
    assert len(unimodal) == 8 and Counter(i["meta"]["true_side"] for i in unimodal) == {"text_a": 4, "text_b": 4}
    assert Counter(i["condition"] for i in built)["cross_lingual"] == 1
    # a record dropped from cross_lingual still gets the conditions listed after it
    lingual_first = ConflictBuilder(conditions=["cross_lingual", "unimodal_text"]).build(source, seed=0)
    assert Counter(i["condition"] for i in lingual_first) == {
        "cross_lingual": 4, "cross_lingual_control": 4, "unimodal_text": 32, "unimodal_text_control": 32}


def test_conflict_image_evidence_in_the_records_cell_format():
    """Image slots show the cell image of the slot's own evidence piece (the value it supports in the asked cell,
    its own distractor cells), which the tiny base model can read; `image_evidence=text` renders the passage."""
    source = synthetic(4)
    by_record = {r["id"]: r for r in source.records()}
    for instance in ConflictBuilder(conditions=["unimodal_image", "cross_modal"]).build(source, seed=0):
        qa = by_record[instance["meta"]["record_id"]]["meta"]["conflict_qa"]
        slots = [slot for slot, _, _ in SLOTS[instance["meta"]["conflict_condition"]]]
        images = iter(instance["images"])
        for piece in instance["meta"]["evidence"]:
            if piece["modality"] == "image":
                key = "evidence" if piece["supports"] == "answer" else "counter_evidence"
                cells = qa["pieces"][key][slots.index(piece["slot"])]["cells"]
                assert next(images) == render_cells(cells["glyphs"], cells["image_size"])
                supported = qa["answer"] if piece["supports"] == "answer" else qa["counter_answer"]
                assert supported in cells["glyphs"]
    as_text = ConflictBuilder(conditions=["cross_modal"], image_evidence="text").build(source, seed=0)[0]
    image_piece = next(p for p in as_text["meta"]["evidence"] if p["modality"] == "image")
    assert as_text["images"] == [render_text(image_piece["text"], {})]



def conflict_record(tmp_path, **extra):
    record = {"id": "q0", "question": "Capital of X?", "answer": "Ay", "counter_answer": "Bee",
              "evidence": "X's capital is Ay.", "counter_evidence": "X's capital is Bee.", **extra}
    return ConflictQASource(str(write_records(tmp_path / "c.jsonl", [record])))


def test_conflict_instances_written_out_by_hand(tmp_path):
    """One conflict and one control instance of a record without per-slot pieces, every field as the docstring
    of ConflictBuilder lays it out: label, passage, separator per slot, then the question; the target; meta."""
    style = {"width": 128, "height": 64, "font_size": 12}
    built = ConflictBuilder(conditions=["unimodal_text", "cross_modal"], render=style).build(
        conflict_record(tmp_path), seed=0)
    by_id = {instance["id"]: instance for instance in built}
    question = "Question: Capital of X?\nDo the sources agree or disagree?"
    conflict = by_id["conflict_qa/q0:unimodal_text:true_text_b:text_b-text_a"]
    assert conflict["source"] == "conflict_qa" and conflict["condition"] == "unimodal_text"
    assert conflict["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Evidence 1: "}, {"type": "text", "text": "X's capital is Ay."},
                                     {"type": "text", "text": "\n"}, {"type": "text", "text": "Evidence 2: "},
                                     {"type": "text", "text": "X's capital is Bee."}, {"type": "text", "text": "\n"},
                                     {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The sources conflict."}]},
    ]
    assert conflict["images"] == []
    assert conflict["meta"] == {
        "conflict": True, "conflict_condition": "unimodal_text", "true_side": "text_b", "agree_on": None,
        "order": ["text_b", "text_a"],
        "evidence": [
            {"slot": "text_b", "modality": "text", "language": "l1", "text": "X's capital is Ay.", "supports": "answer",
             "part_index": 1},
            {"slot": "text_a", "modality": "text", "language": "l1", "text": "X's capital is Bee.",
             "supports": "counter", "part_index": 4},
        ],
        "question": "Capital of X?", "answer": "Ay", "counter_answer": "Bee", "record_id": "conflict_qa/q0",
    }
    control = by_id["conflict_qa/q0:cross_modal_control:agree_counter:image-text"]
    assert control["condition"] == "cross_modal_control"
    assert control["messages"][0]["content"] == [
        {"type": "text", "text": "Evidence 1: "}, {"type": "image"}, {"type": "text", "text": "\n"},
        {"type": "text", "text": "Evidence 2: "}, {"type": "text", "text": "X's capital is Bee."},
        {"type": "text", "text": "\n"}, {"type": "text", "text": question}]
    assert control["target"] == "The sources agree. Bee"
    assert control["images"] == [render_text("X's capital is Bee.", style)]  # no cells in the record: the passage
    assert [piece.get("image_index") for piece in control["meta"]["evidence"]] == [0, None]
    assert (control["meta"]["true_side"], control["meta"]["agree_on"]) == (None, "counter")


def test_conflict_prompt_pieces_controls_and_shuffle_are_settings(tmp_path):
    source = conflict_record(tmp_path, evidence_l2="Ay est la capitale.", counter_evidence_l2="Bee est la capitale.")
    builder = ConflictBuilder(conditions=["cross_lingual"], controls=False, evidence_label="[{n}] ",
                              evidence_separator=" | ", question_template="Q: {question}",
                              target_conflict="Conflict.", target_agree="Agree: {answer}")
    built = builder.build(source, seed=0)
    assert len(built) == 4 and not any(instance["meta"]["conflict"] is False for instance in built)
    l1_first = next(i for i in built if i["meta"]["order"] == ["l1", "l2"] and i["meta"]["true_side"] == "l1")
    assert [part["text"] for part in l1_first["messages"][0]["content"]] == [
        "[1] ", "X's capital is Ay.", " | ", "[2] ", "Bee est la capitale.", " | ", "Q: Capital of X?"]
    assert l1_first["target"] == "Conflict."
    agree = ConflictBuilder(conditions=["cross_lingual"], target_agree="Agree: {answer}").build(source, seed=0)
    assert {i["target"] for i in agree if not i["meta"]["conflict"]} == {"Agree: Ay", "Agree: Bee"}
    in_order = [i["id"] for i in ConflictBuilder().build(source, seed=0)]
    shuffled = [i["id"] for i in ConflictBuilder(shuffle=True).build(source, seed=0)]
    assert sorted(shuffled) == sorted(in_order) and shuffled != in_order
    assert shuffled == [i["id"] for i in ConflictBuilder(shuffle=True).build(source, seed=0)]
    assert shuffled != [i["id"] for i in ConflictBuilder(shuffle=True).build(source, seed=1)]


@pytest.mark.parametrize("settings, message", [
    ({"conditions": ["cross_modal", "visual"]}, "unknown conflict conditions ['visual']; known: ['unimodal_text', "
                                                "'unimodal_image', 'cross_modal', 'cross_lingual']"),
    ({"variants": "some"}, "variants must be one of ('all', 'rotate'), got 'some'"),
    ({"image_evidence": "pixels"}, "image_evidence must be one of ('auto', 'text'), got 'pixels'"),
])
def test_conflict_settings_it_cannot_honour_are_refused_naming_them(settings, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ConflictBuilder(**settings)


def test_conflict_needs_records_with_conflict_qa(pgps9k_root):
    source = Pgps9kSource(str(pgps9k_root), on_error="skip")
    with pytest.raises(DataError) as refused:
        ConflictBuilder().build(source, seed=0)
    first = source.records()[0]
    error = refused.value
    assert (error.file, error.record_id, error.field, error.problem, error.reason) == (
        first["source"], first["id"], "meta.conflict_qa",
        "builder=conflict needs (question, evidence, answer) records: data=synthetic or data=conflict_qa",
        "no conflict_qa")


def test_conflict_each_slot_shows_its_own_piece_in_its_own_language():
    source = synthetic(3)
    by_record = {r["id"]: r for r in source.records()}
    for instance in ConflictBuilder(conditions=["cross_lingual", "unimodal_text"]).build(source, seed=0):
        qa = by_record[instance["meta"]["record_id"]]["meta"]["conflict_qa"]
        slots = [slot for slot, _, _ in SLOTS[instance["meta"]["conflict_condition"]]]
        parts = instance["messages"][0]["content"]
        for piece in instance["meta"]["evidence"]:
            key = "evidence" if piece["supports"] == "answer" else "counter_evidence"
            own = qa["pieces"][key][slots.index(piece["slot"])]
            assert parts[piece["part_index"]]["text"] == own["text" if piece["language"] == "l1" else "text_l2"]


def test_conflict_without_pieces_draws_an_image_slot_from_the_records_cells():
    one_key = {code: {**spec, "keys": spec["keys"][:1]} for code, spec in DEFAULT_LANGUAGES.items()}
    source = SyntheticFactsSource(num_records=2, num_facts=(1, 1), languages=one_key)
    by_record = {r["id"]: r for r in source.records()}
    for instance in ConflictBuilder(conditions=["unimodal_image"]).build(source, seed=0):
        qa = by_record[instance["meta"]["record_id"]]["meta"]["conflict_qa"]
        assert "pieces" not in qa  # one key: no distractor facts to draw pieces from
        for piece, image in zip(instance["meta"]["evidence"], instance["images"], strict=True):
            key = "evidence" if piece["supports"] == "answer" else "counter_evidence"
            assert piece["text"] == qa[key]
            assert image == render_cells(qa[f"{key}_cells"]["glyphs"], qa[f"{key}_cells"]["image_size"])


@pytest.mark.parametrize("image_evidence, size", [("auto", (32, 32)), ("text", (160, 72))])
def test_conflict_images_are_drawn_at_their_size_under_the_builders_cache_dir(image_evidence, size, tmp_path):
    # cells at the record's image size, passages at the render style's; both cached where the builder says
    builder = ConflictBuilder(conditions=["unimodal_image"], image_evidence=image_evidence, cache_dir=str(tmp_path),
                              render={"width": 160, "height": 72, "font_size": 10})
    for instance in builder.build(SyntheticFactsSource(num_records=1, image_size=32), seed=0):
        for path in instance["images"]:
            assert Path(path).is_relative_to(tmp_path), path
            with Image.open(path) as image:
                assert image.size == size
