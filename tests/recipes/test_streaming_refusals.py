"""xmodal-train with data.streaming=true refuses at start what needs the whole corpus (sampler, metric probes)."""

from __future__ import annotations

import json

import pytest
from tests.support.helpers import compose_config

from xmodal.core.errors import ConfigError
from xmodal.recipes.finetune import build_train_dataset
from xmodal.trainers.models.tiny import build_tiny_llava


@pytest.mark.parametrize("needs_corpus", ["trainer.train_sampling_strategy=group_by_length", "metrics=imbalance"])
def test_streaming_refuses_what_needs_the_whole_corpus(tmp_path, needs_corpus):
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(record) + "\n")
    _, processor = build_tiny_llava(
        text=dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2),
        vision=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4),
    )
    streamed = ["data=messages", f"data.path={path}", "data.streaming=true", f"cache_dir={tmp_path}"]
    build_train_dataset(compose_config(streamed), processor)  # streaming alone is fine
    with pytest.raises(ConfigError, match="data.streaming=true: .*need the whole corpus"):
        build_train_dataset(compose_config([*streamed, needs_corpus]), processor)
