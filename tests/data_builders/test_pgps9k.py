"""PGPS9K: clause verbalisation, the real sample, answer formats, and bad records."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from xmodal.data_builders.builders import PairedBuilder
from xmodal.core.errors import DataError
from xmodal.recipes import instances_of
from xmodal.data_builders.sources import Pgps9kSource, verbalise_clause
from xmodal.data_builders.sources.pgps9k import PAPER_INSTRUCTION, paper_structural_clause
from tests.support.helpers import compose_config


@pytest.mark.parametrize(
    "clause, english",
    [
        ("line A B C", "B is on line AC."),
        ("line X Y Z", "Y is on line XZ."),
        ("line E A", "EA is a line segment."),
        ("line F E D C", "E, D are on line FC."),
        ("line m lieson A W Y B", "A, W, Y, B lie on line m."),
        ("line r lieson D B C", "D, B, C lie on line r."),
        ("\\odot C lieson B F E A", "B, F, E, A lie on circle C."),
        ("\\odot Q lieson A B", "A, B lie on circle Q."),
        ("\\odot O lieson A", "A lies on circle O."),
    ],
)
def test_structural_clauses_read_as_english(clause, english):
    assert verbalise_clause(clause) == english


@pytest.mark.parametrize(
    "clause", ["AC \\perp EB on B", "\\arc A B", "line", "line A", "line m lieson", "polygon A B C"]
)
def test_unknown_or_semantic_clauses_are_kept_verbatim(clause):
    assert verbalise_clause(clause) == clause


def readable(path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except OSError:
        return False


def test_real_sample_loads_every_record_with_a_readable_diagram(pgps9k_root):
    source = Pgps9kSource(str(pgps9k_root), on_error="skip")
    records = source.records()
    raw = json.loads((pgps9k_root / "train.json").read_text())
    good = [key for key, r in raw.items() if readable(pgps9k_root / "Diagram_Visual" / r["diagram"])]
    assert [r["id"] for r in records] == [f"pgps9k/train/{key}" for key in good]
    assert source.skipped == ({"diagram: unreadable image file": len(raw) - len(good)} if len(good) < len(raw) else {})
    by_id = {r["id"]: r for r in records}
    prob_1 = by_id["pgps9k/train/prob_1"]
    assert prob_1["images"] == [str((pgps9k_root / "Diagram_Visual" / "img_3160.png").resolve())]
    assert prob_1["target"] == "14.9"  # "14.900" normalised
    assert prob_1["meta"]["facts"] == [
        "A, W, Y, B lie on line m.",
        "Y is on line XZ.",
        "WZ is a line segment.",
        "XW is a line segment.",
        "line m \\perp XZ on Y",
        "XY = YZ",
    ]
    # the sample itself is vision-centric: the question only
    assert prob_1["messages"][0]["content"][1]["text"] == raw["prob_1"]["text"]


def test_choice_letter_answers_and_choices_in_prompt(pgps9k_root):
    source = Pgps9kSource(str(pgps9k_root), answer_format="choice_letter", choices_in_prompt=True, limit=1)
    first = source.records()[0]  # prob_0: answer 164.317, choices 56.0 82.2 164.3 328.6
    assert first["target"] == "C"
    assert first["meta"]["question"].endswith("Choices: A. 56 B. 82.2 C. 164.3 D. 328.6")


def _copy_sample(pgps9k_root, tmp_path, edit=lambda records: None, test_keys=()):
    """A small release in tmp_path: train.json with prob_0-2 (after `edit`), test.json with `test_keys` if any."""
    root = tmp_path / "pgps"
    (root / "Diagram_Visual").mkdir(parents=True)
    raw = json.loads((pgps9k_root / "train.json").read_text())
    splits = {"train": {key: raw[key] for key in ("prob_0", "prob_1", "prob_2")}}
    edit(splits["train"])
    if test_keys:
        splits["test"] = {key: raw[key] for key in test_keys}
    for split, records in splits.items():
        for record in records.values():
            image = pgps9k_root / "Diagram_Visual" / str(record.get("diagram"))
            if image.is_file():
                shutil.copy(image, root / "Diagram_Visual" / image.name)
        (root / f"{split}.json").write_text(json.dumps(records))
    return root


def test_split_reads_only_its_own_file(pgps9k_root, tmp_path):
    root = _copy_sample(pgps9k_root, tmp_path, test_keys=("prob_4", "prob_10"))
    assert [r["id"] for r in Pgps9kSource(str(root)).records()] == [f"pgps9k/train/prob_{i}" for i in range(3)]
    test = Pgps9kSource(str(root), split="test").records()
    assert [r["id"] for r in test] == ["pgps9k/test/prob_4", "pgps9k/test/prob_10"]
    with pytest.raises(ValueError, match="data.split"):
        Pgps9kSource(str(root), split="validation")


def test_training_config_never_reads_test_json_and_evaluation_reads_it(pgps9k_root, tmp_path):
    root = _copy_sample(pgps9k_root, tmp_path, test_keys=("prob_4", "prob_10"))
    overrides = ["data=pgps9k", f"data.root={root}", "builder=paired"]
    trained_on = {i["meta"]["pair_id"] for i in instances_of(compose_config(overrides)).instances}
    assert trained_on == {f"pgps9k/train/prob_{i}" for i in range(3)}
    evaluated_on = {i["meta"]["pair_id"] for i in instances_of(compose_config(overrides, "evaluate")).instances}
    assert evaluated_on == {"pgps9k/test/prob_4", "pgps9k/test/prob_10"}
    assert compose_config([*overrides, "data.split=test"]).data.split == "test"
    (root / "test.json").write_text("not JSON: a training run that opened it would fail")
    instances_of(compose_config(overrides))


def test_missing_split_file_is_named(pgps9k_root, tmp_path):
    root = _copy_sample(pgps9k_root, tmp_path)
    with pytest.raises(FileNotFoundError, match="test.json"):
        Pgps9kSource(str(root), split="test").records()


@pytest.mark.parametrize(
    "clause, released",
    [
        ("line A B C", "B is on line AC"),
        ("line E A", ""),  # two-point lines are dropped
        ("line m lieson A W Y B", "A, W, Y, B lie on line m"),
        ("line A B C D", "A, B are on line CD"),  # the release splits off the last two points as the line
        ("line D E I K", "D, E are on line IK"),
        ("\\odot C lieson B F E A", "In \\odot C, point B, F, E, A lie on \\odot C"),
        ("polygon A B C", ""),  # unknown shapes are dropped
        ("line", ""),
    ],
)
def test_paper_style_words_structural_clauses_as_released(clause, released):
    assert paper_structural_clause(clause) == released


def test_paper_prompts_on_the_real_sample(pgps9k_root):
    source = Pgps9kSource(str(pgps9k_root), prompt_style="paper", on_error="skip")
    records = {r["id"]: r for r in source.records()}
    prob_10 = records["pgps9k/train/prob_10"]
    # stru: line B A, line A D F, line F E, line B D E, \odot C lieson B F E A; sem: three angle/arc clauses
    text_centric = (
        "In this problem, D is on line AF, D is on line BE, In \\odot C, point B, F, E, A lie on \\odot C, "
        "m \\angle ABD = x, m \\angle DFE = y, m \\widehat AE = 72.\n"
        "Based on these conditions, answer the question: Find the value of variable y.\n" + PAPER_INSTRUCTION
    )
    vision_centric = "Based on the information in the image, answer the question: Find the value of variable y.\n"
    assert prob_10["meta"]["centric_prompts"] == {
        "text_centric": text_centric, "vision_centric": vision_centric + PAPER_INSTRUCTION,
    }
    assert PAPER_INSTRUCTION.endswith("The final answer MUST BE put in \\boxed{}.")
    assert prob_10["messages"][0]["content"][1]["text"] == vision_centric + PAPER_INSTRUCTION
    assert prob_10["target"] == "\\boxed{" + prob_10["meta"]["answer"] + "}"
    built = {i["id"]: i for i in PairedBuilder(emit="both").build(source, seed=0)}
    instance = built["pgps9k/train/prob_10:vision_centric"]
    assert instance["teacher"]["messages"][0]["content"][1]["text"] == text_centric
    assert instance["messages"][0]["content"][1]["text"] == vision_centric + PAPER_INSTRUCTION
    assert "centric_prompts" not in instance["meta"]  # the facts stay out of the vision-centric instance



def test_missing_diagram_names_file_record_and_field(pgps9k_root, tmp_path):
    root = _copy_sample(pgps9k_root, tmp_path, lambda r: r["prob_1"].update(diagram="img_missing.png"))
    with pytest.raises(DataError) as caught:
        Pgps9kSource(str(root)).records()
    message = str(caught.value)
    assert "train.json" in message and "'prob_1'" in message and "'diagram'" in message and "img_missing.png" in message
    assert "on_error=skip" in message


def test_skip_counts_bad_records(pgps9k_root, tmp_path):
    def edit(records):
        records["prob_1"]["diagram"] = "img_missing.png"
        del records["prob_2"]["text"]

    source = Pgps9kSource(str(_copy_sample(pgps9k_root, tmp_path, edit)), on_error="skip")
    assert [r["id"] for r in source.records()] == ["pgps9k/train/prob_0"]
    assert source.skipped == {"diagram: missing image file": 1, "text: missing field": 1}
