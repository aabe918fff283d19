"""LLaVA-Instruct, text-only and conflict-QA sources: placeholders, formats, and bad input named or counted."""

from __future__ import annotations

import pytest
from tests.data_builders.record_files import write_image, write_records

from xmodal.core.errors import DataError
from xmodal.data_builders.sources import ConflictQASource, LlavaInstructSource, TextOnlySource


def llava_record(record_id, image="a.png", first="<image>\nWhat is shown?"):
    record = {"id": record_id, "conversations": [{"from": "human", "value": first}, {"from": "gpt", "value": "A cat."}]}
    if image is not None:
        record["image"] = image
    return record


@pytest.fixture
def images(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png", "black")
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    return tmp_path / "img"


def test_llava_placeholders_become_image_parts_in_place(tmp_path, images):
    records = [
        llava_record("one"),
        llava_record("two", image=["a.png", "b.png"], first="Compare <image> with <image>\nWhich is darker?"),
        llava_record("text", image=None, first="Say hi."),
    ]
    source = LlavaInstructSource(str(write_records(tmp_path / "d.json", records)), str(images))
    one, two, text = source.records()
    assert one["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "What is shown?"}]
    assert one["images"] == [str(images / "a.png")] and one["target"] == "A cat."
    assert two["messages"][0]["content"] == [
        {"type": "text", "text": "Compare "},
        {"type": "image"},
        {"type": "text", "text": " with "},
        {"type": "image"},
        {"type": "text", "text": "Which is darker?"},
    ]
    assert two["images"] == [str(images / "a.png"), str(images / "b.png")]
    assert text["images"] == [] and text["messages"][0]["content"] == [{"type": "text", "text": "Say hi."}]


@pytest.mark.parametrize(
    "record, field, words",
    [
        (llava_record("r7", image="nope.png"), "image", "image file not found"),
        (llava_record("r7", image=["a.png", "empty.png"]), "image", "unreadable image file"),
        (llava_record("r7", first="What is shown?"), "images", "0 image placeholders but 1 images"),
        (llava_record("r7", image=None), "images", "1 image placeholders but 0 images"),
        ({"id": "r7", "image": "a.png"}, "conversations", "missing"),
        ({"id": "r7", "conversations": [{"from": "robot", "value": "hi"}]}, "conversations[0].from", "unknown speaker"),
    ],
)
def test_llava_bad_records_name_file_record_and_field(tmp_path, images, record, field, words):
    path = write_records(tmp_path / "bad.jsonl", [llava_record("ok"), record])
    with pytest.raises(DataError) as caught:
        LlavaInstructSource(str(path), str(images)).records()
    message = str(caught.value)
    assert "bad.jsonl" in message and "'r7'" in message and f"field '{field}'" in message and words in message


def test_llava_skip_counts_every_bad_record(tmp_path, images):
    path = write_records(
        tmp_path / "mixed.jsonl",
        [llava_record("ok"), "{not json", llava_record("gone", image="nope.png"), llava_record("bare", image=None)],
    )
    source = LlavaInstructSource(str(path), str(images), on_error="skip")
    assert [r["id"] for r in source.records()] == ["llava_instruct/ok"]
    assert source.skipped == {
        "<json>: malformed JSON": 1,
        "image: missing image file": 1,
        "images: placeholder/image count mismatch": 1,
    }


def test_repeated_ids_are_numbered(tmp_path, images):
    path = write_records(tmp_path / "d.json", [llava_record("x"), llava_record("x"), llava_record("y")])
    ids = [r["id"] for r in LlavaInstructSource(str(path), str(images)).records()]
    assert ids == ["llava_instruct/x", "llava_instruct/x#2", "llava_instruct/y"]


def test_text_only_reads_alpaca_and_sharegpt(tmp_path):
    records = [
        {"id": "a1", "instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"id": "a2", "instruction": "Name a colour.", "output": "red"},
        {"id": "s1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    a1, a2, s1 = TextOnlySource(str(write_records(tmp_path / "t.json", records))).records()
    assert a1["messages"][0]["content"] == [{"type": "text", "text": "Add the numbers.\n\n2 and 3"}]
    assert (a1["target"], a2["target"], s1["target"]) == ("5", "red", "Hello")
    assert a2["messages"][0]["content"][0]["text"] == "Name a colour."
    assert all(r["images"] == [] for r in (a1, a2, s1))


def test_text_only_rejects_images(tmp_path):
    record = {"id": "x", "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]}
    with pytest.raises(DataError, match=r"t.json: record 'x', field 'conversations\[0\]'"):
        TextOnlySource(str(write_records(tmp_path / "t.json", [record]))).records()


def test_conflict_qa_source_requires_fields(tmp_path):
    good = {"id": "q1", "question": "Capital of X?", "answer": "Ay", "counter_answer": "Bee",
            "evidence": "X's capital is Ay.", "counter_evidence": "X's capital is Bee."}
    path = write_records(tmp_path / "c.jsonl", [good, {**good, "id": "q2", "counter_answer": None}])
    with pytest.raises(DataError, match="c.jsonl: record 'q2', field 'counter_answer': missing"):
        ConflictQASource(str(path)).records()
    source = ConflictQASource(str(path), on_error="skip")
    (sample,) = source.records()
    assert sample["meta"]["conflict_qa"]["evidence_l2"] is None
    assert sample["messages"][0]["content"][0]["text"] == "Evidence: X's capital is Ay.\nQuestion: Capital of X?"
