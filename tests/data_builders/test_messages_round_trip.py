"""What xmodal-data writes, data=messages reads back as the same instances and the same token ids and labels;
what needs the whole corpus refuses a stream at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.helpers import compose_config, read_metrics, xmodal_train

from xmodal.core.errors import ConfigError
from xmodal.data_builders.records import ArrowRecords
from xmodal.data_builders.tokenize import EncodingSettings, tokenize_instances
from xmodal.recipes import instances_of
from xmodal.recipes.data import write_build
from xmodal.trainers.models.tiny import build_tiny_llava

def config(*overrides: str):
    return compose_config(list(overrides))


TINY = dict(
    text=dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2),
    vision=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4),
)


def comparable(instance: dict) -> dict:
    """An instance's content: its messages, target and image bytes (the written copies live elsewhere)."""
    return {
        "messages": instance["messages"],
        "target": instance["target"],
        "images": [Path(path).read_bytes() for path in instance["images"]],
    }


def test_written_instances_read_back_equal_and_tokenize_to_the_same_ids_and_labels(tmp_path, cache_dir):
    original = instances_of(config("data.num_records=12", f"cache_dir={cache_dir}")).instances
    out = tmp_path / "train.jsonl"
    write_build(config("data.num_records=12", f"cache_dir={cache_dir}"), str(out))
    read_back = instances_of(
        config("data=messages", f"data.path={out}", "builder.shuffle=false", f"cache_dir={cache_dir}", "data.num_proc=2")
    ).instances
    assert isinstance(read_back, ArrowRecords)  # the map-style path keeps records in Arrow
    assert [comparable(instance) for instance in read_back] == [comparable(instance) for instance in original]

    _, processor = build_tiny_llava(**TINY)
    settings = EncodingSettings(max_length=512, num_proc=2)
    tokenized = [
        tokenize_instances(instances, processor, settings, str(tmp_path / name))
        for instances, name in ((original, "a"), (read_back, "b"))
    ]
    for column in ("input_ids", "labels", "length"):
        assert tokenized[0][column] == tokenized[1][column]


@pytest.mark.parametrize("builder", ["instance_mix", "curriculum", "paired"])
def test_builders_that_need_the_whole_corpus_refuse_a_stream_at_start(tmp_path, builder):
    cfg = config("data=messages", f"data.path={tmp_path / 'never_read.jsonl'}", "data.streaming=true", f"builder={builder}")
    with pytest.raises(ConfigError, match="data.streaming=true: builder .* needs the whole corpus"):
        instances_of(cfg)


@pytest.mark.slow
def test_xmodal_data_output_trains_with_data_messages_streamed(tmp_path, cache_dir):
    """The round trip through the console scripts, streaming, with a record that goes bad after writing."""
    out = tmp_path / "train.jsonl"
    write_build(config("data.num_records=16", f"cache_dir={cache_dir}"), str(out))
    image = next((tmp_path / "train_images").iterdir())
    image.write_bytes(b"")  # corrupted after the file was written: found only when the stream reaches it
    run = tmp_path / "run"
    xmodal_train(
        ["data=messages", f"data.path={out}", "data.streaming=true", "data.on_error=skip", "debug=fast",
         "trainer.max_steps=4", "trainer.per_device_train_batch_size=4", f"output_dir={run}", "model=tiny_llava"],
        cache_dir,
    )
    rows = [row for row in read_metrics(str(run)) if "loss" in row]
    assert len(rows) == 4 and rows[-1]["skipped_records"] >= 1
