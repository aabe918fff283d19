"""data=messages: OpenAI/TRL and LLaMA-Factory records, files and saved datasets with image bytes, streaming, and
bad input named by file, record and field or skipped and counted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from PIL import Image
from tests.data_builders.record_files import write_image, write_records

from xmodal.core.errors import ConfigError, DataError
from xmodal.data_builders.records import ArrowRecords
from xmodal.data_builders.sources import MessagesSource
from xmodal.trainers.lifecycle.skipped_records import SkippedRecordsCallback

ASK = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}
ANSWER = {"role": "assistant", "content": "red"}


def png_bytes(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def samples(source) -> list[dict]:
    records = source.records()
    return [json.loads(row["instance"]) for row in records] if source.streaming else list(records)


@pytest.fixture
def record_dir(tmp_path):
    write_image(tmp_path / "red.png", "red")
    write_image(tmp_path / "pics" / "blue.png", "blue")
    return tmp_path


def test_openai_messages_with_string_and_typed_content_resolve_images_beside_the_file(record_dir, cache_dir):
    records = [
        {"messages": [ASK, ANSWER], "images": ["red.png"]},
        {"id": "chat", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]},
    ]
    path = write_records(record_dir / "train.jsonl", records)
    first, chat = MessagesSource(str(path), cache_dir=cache_dir).records()
    assert first == {
        "id": "messages/line 1", "source": "messages", "condition": "default", "target": "red", "meta": {},
        "messages": [ASK, {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
        "images": [str(record_dir / "red.png")],
    }
    assert chat["id"] == "messages/chat" and chat["images"] == [] and chat["target"] == "Hello"
    assert [m["content"] for m in chat["messages"][:2]] == [[{"type": "text", "text": "Be brief."}],
                                                            [{"type": "text", "text": "Hi"}]]
    # image_folder, when set, is where relative paths resolve
    moved = write_records(record_dir / "moved.json", [{"messages": [ASK, ANSWER], "images": "blue.png"}])
    (only,) = MessagesSource(str(moved), image_folder=str(record_dir / "pics"), cache_dir=cache_dir).records()
    assert only["images"] == [str(record_dir / "pics" / "blue.png")] and only["id"] == "messages/0"


def test_llama_factory_sharegpt_placeholders_system_and_several_images(record_dir, cache_dir):
    records = [
        {"conversations": [{"from": "human", "value": "<image>Compare with <image>"}, {"from": "gpt", "value": "same"}],
         "images": ["red.png", "pics/blue.png"], "system": "You see images."},
        {"messages": [{"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "blue"}],
         "images": ["pics/blue.png"]},
        {"conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "blue"}],
         "image": "pics/blue.png"},  # LLaVA's own key
    ]
    path = write_records(record_dir / "lf.json", records)
    two, one, llava = MessagesSource(str(path), layout="sharegpt", cache_dir=cache_dir).records()
    assert {key: llava[key] for key in ("messages", "images")} == {key: one[key] for key in ("messages", "images")}
    assert two["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "You see images."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare with "}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "same"}]},
    ]
    assert two["images"] == [str(record_dir / "red.png"), str(record_dir / "pics" / "blue.png")]
    assert one["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "What?"}]


def image_dataset() -> datasets.Dataset:
    """Two records whose images exist only as bytes in an `Image()` column, one with two images."""
    features = datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "images": datasets.List(datasets.Image()),
    })
    return datasets.Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}],
                [{"role": "user", "content": "<image><image>Same?"}, {"role": "assistant", "content": "no"}],
            ],
            "images": [[{"bytes": png_bytes("red"), "path": None}],
                       [{"bytes": png_bytes("red"), "path": None}, {"bytes": png_bytes("blue"), "path": None}]],
        },
        features=features,
    )


@pytest.mark.parametrize("form", ["save_to_disk", "parquet", "arrow"])
@pytest.mark.parametrize("streaming", [False, True])
def test_saved_datasets_with_image_bytes_train_from_files_written_once_by_content(tmp_path, cache_dir, form, streaming):
    dataset = image_dataset()
    path = {"save_to_disk": tmp_path / "saved", "parquet": tmp_path / "d.parquet", "arrow": tmp_path / "saved"}[form]
    if form == "parquet":
        dataset.to_parquet(str(path))
    else:
        dataset.save_to_disk(str(path))
        if form == "arrow":
            path = next(path.glob("*.arrow"))
    source = MessagesSource(str(path), layout="sharegpt", streaming=streaming, cache_dir=cache_dir, num_proc=2)
    red, pair = samples(source)
    assert [Path(p).read_bytes() for p in pair["images"]] == [png_bytes("red"), png_bytes("blue")]
    assert red["images"] == pair["images"][:1]  # the same bytes are one file
    assert pair["messages"][0]["content"] == [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]
    assert not streaming or isinstance(source.records(), datasets.IterableDataset)
    assert streaming or isinstance(source.records(), ArrowRecords)


def test_typed_parts_stored_as_parquet_structs_read_like_json(tmp_path, cache_dir):
    # A Parquet/Hub column of parts is a struct: every part carries every key, the unused ones None.
    parts = [{"type": "image", "text": None}, {"type": "text", "text": "Colour?"}]
    dataset = datasets.Dataset.from_dict({
        "messages": [[{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]],
        "images": [[png_bytes("red")]],
    })
    dataset.to_parquet(str(tmp_path / "parts.parquet"))
    (sample,) = MessagesSource(str(tmp_path / "parts.parquet"), cache_dir=cache_dir).records()
    assert sample["messages"][0]["content"] == ASK["content"] and Path(sample["images"][0]).read_bytes() == png_bytes("red")


def test_image_parts_may_carry_their_own_image(record_dir, cache_dir):
    inline = [{"type": "image", "image": "red.png"}, {"type": "text", "text": "Colour?"}]
    path = write_records(record_dir / "inline.jsonl", [{"messages": [{"role": "user", "content": inline}, ANSWER]}])
    (sample,) = MessagesSource(str(path), cache_dir=cache_dir).records()
    assert sample["messages"][0]["content"] == ASK["content"] and sample["images"] == [str(record_dir / "red.png")]


BAD_RECORDS = [
    ({"images": []}, "messages", "missing"),
    ({"messages": [{"role": "robot", "content": "x"}, ANSWER]}, "messages[0].role", "unknown role"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}, ANSWER]}, "messages[0].content[0]", "part"),
    ({"messages": [{"role": "user", "content": 3}, ANSWER]}, "messages[0].content", "string or a list"),
    ({"messages": [ASK, ANSWER], "images": ["absent.png"]}, "images[0]", "image file not found"),
    ({"messages": [ASK, ANSWER], "images": []}, "images", "1 image placeholders but 0 images"),
    ({"messages": [ASK]}, "messages", "no assistant turn"),
    (["not", "an", "object"], "<record>", "expected an object"),
    ("{malformed", "<json>", "Expecting property name"),
]


@pytest.mark.parametrize("record,field,problem", BAD_RECORDS)
def test_a_bad_record_stops_the_build_naming_file_record_and_field(record_dir, cache_dir, record, field, problem):
    path = write_records(record_dir / "bad.jsonl", [{"messages": [ASK, ANSWER], "images": ["red.png"]}, record])
    with pytest.raises(DataError) as error:
        MessagesSource(str(path), cache_dir=cache_dir).records()
    message = str(error.value)
    assert message.startswith(f"{path}: record 'line 2', field '{field}'") and problem in message
    assert "\n" not in message
    skipping = MessagesSource(str(path), cache_dir=cache_dir, on_error="skip")
    assert len(skipping.records()) == 1 and sum(skipping.skipped.values()) == 1


def truncated_jpeg() -> bytes:
    """A JPEG cut short: its header is whole, so PIL's verify() accepts it; decoding it fails."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_corrupt_image_bytes_and_sharegpt_placeholder_mismatch_are_named(tmp_path, cache_dir):
    with Image.open(io.BytesIO(truncated_jpeg())) as image:
        image.verify()  # what a header check lets through
    dataset = datasets.Dataset.from_dict({
        "conversations": [[{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "a"}]] * 3,
        "images": [[b"not an image"], [], [truncated_jpeg()]],
    })
    dataset.to_parquet(str(tmp_path / "bad.parquet"))
    source = MessagesSource(str(tmp_path / "bad.parquet"), layout="sharegpt", cache_dir=cache_dir, on_error="skip")
    assert len(source.records()) == 0
    assert dict(source.skipped) == {"images[0]: unreadable image data": 2, "images: placeholder/image count mismatch": 1}
    with pytest.raises(DataError, match=r"bad.parquet: record 0, field 'images\[0\]': unreadable image data"):
        MessagesSource(str(tmp_path / "bad.parquet"), layout="sharegpt", cache_dir=cache_dir).records()


def test_an_image_url_offline_fails_at_start_in_one_line(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_records(tmp_path / "urls.jsonl", [{"messages": [ASK, ANSWER], "images": ["https://example.com/a.png"]}])
    for on_error in ("raise", "skip"):  # every URL fails alike: not a record to skip
        with pytest.raises(ConfigError) as error:
            MessagesSource(str(path), cache_dir=cache_dir, on_error=on_error).records()
        assert str(error.value).startswith(f"{path}: record 'line 1', field 'images[0]': image URL https://example.com")
        assert "\n" not in str(error.value)


def test_a_path_that_is_neither_a_file_nor_a_reachable_hub_dataset_fails_in_one_line(tmp_path, cache_dir, monkeypatch):
    # Offline as HF_HUB_OFFLINE=1 makes it, set where the libraries read it at import (no network in tests).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as error:
        MessagesSource("nobody-xmodal/absent-dataset", cache_dir=cache_dir).records()
    assert str(error.value).startswith("nobody-xmodal/absent-dataset: record None, field 'path': no such file")
    assert "\n" not in str(error.value)


def test_streaming_skips_and_counts_a_bad_record_found_mid_run_or_stops_naming_it(record_dir, cache_dir):
    good = {"messages": [ASK, ANSWER], "images": ["red.png"]}
    path = write_records(record_dir / "mid.jsonl", [good, good, {"messages": [ASK, ANSWER], "images": ["gone.png"]}, good])
    source = MessagesSource(str(path), streaming=True, cache_dir=cache_dir, on_error="skip")
    stream = iter(source.records())
    next(stream)
    assert not source.skipped  # nothing is read before the trainer asks for it
    logs = {"loss": 1.0}
    SkippedRecordsCallback(source).on_log(None, None, None, logs=logs)
    assert logs == {"loss": 1.0}
    assert len(list(stream)) == 2 and dict(source.skipped) == {"images[0]: missing image file": 1}
    SkippedRecordsCallback(source).on_log(None, None, None, logs=logs)
    assert logs == {"loss": 1.0, "skipped_records": 1}
    with pytest.raises(DataError, match=r"mid.jsonl: record 'line 3', field 'images\[0\]': image file not found"):
        list(MessagesSource(str(path), streaming=True, cache_dir=cache_dir).records())
