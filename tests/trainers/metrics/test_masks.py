"""Query and span masks: hand-made label patterns, image/text context, and conflict evidence pieces."""

from __future__ import annotations

import pytest
import torch
from tests.trainers.metrics.imbalance_support import BUILDERS, collate
from PIL import Image

from xmodal.trainers.metrics.imbalance_probes import answer_queries, last_prompt_queries, probe_masks
from xmodal.core.tokens import image_token_id

IGNORE = -100


def test_queries_from_labels():
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6, IGNORE, IGNORE, 7, IGNORE]])
    assert last_prompt_queries(labels).int().tolist() == [[0, 1, 0, 0, 0, 1, 0, 0]]
    assert answer_queries(labels).int().tolist() == [[0, 0, 1, 1, 0, 0, 1, 0]]


def test_image_text_spans_stop_before_the_first_query_and_skip_special_tokens():
    image, special, pad = 9, 1, 0
    batch = {
        "input_ids": torch.tensor([[1, 4, 9, 9, 5, 6, 7, 8, 0], [0, 1, 9, 9, 4, 5, 6, 7, 8]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1, 1, 1]]),
        "labels": torch.tensor([[IGNORE] * 6 + [7, 8, IGNORE], [IGNORE] * 7 + [7, 8]]),
    }
    masks = probe_masks(batch, image, [special, pad], query="last_prompt")
    assert masks.query.int().tolist() == [[0, 0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0, 0]]
    assert masks.a.int().tolist() == [[0, 0, 1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0, 0]]
    assert masks.b.int().tolist() == [[0, 1, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0]]
    assert masks.span_names == ("image", "text")


def conflict_instance(image_path) -> dict:
    """A cross-modal conflict instance as builder=conflict writes it (text evidence first, then an image)."""
    parts = [
        {"type": "text", "text": "Evidence 1: "},
        {"type": "text", "text": "A = 7"},
        {"type": "text", "text": "\n"},
        {"type": "text", "text": "Evidence 2: "},
        {"type": "image"},
        {"type": "text", "text": "\n"},
        {"type": "text", "text": "Question: What is the value of A?"},
    ]
    evidence = [
        {"slot": "text", "modality": "text", "language": "l1", "text": "A = 7", "supports": "answer", "part_index": 1},
        {"slot": "image", "modality": "image", "language": "l1", "text": "A = 3", "supports": "counter",
         "part_index": 4, "image_index": 0},
    ]
    return {
        "id": "conflict-0",
        "condition": "cross_modal",
        "messages": [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": [{"type": "text", "text": "The sources conflict."}]},
        ],
        "images": [str(image_path)],
        "meta": {"evidence": evidence},
    }


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_evidence_spans_cover_exactly_each_piece(name, tmp_path):
    model, processor = BUILDERS[name]()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "evidence.png")
    instance = conflict_instance(tmp_path / "evidence.png")
    batch = collate([instance], processor)
    masks = probe_masks(
        batch, image_token_id(model.config), processor.tokenizer.all_special_ids, spans="evidence",
        instances=[instance], tokenizer=processor.tokenizer,
    )
    ids = batch["input_ids"][0]
    image_positions = ids == image_token_id(model.config)
    assert masks.span_names == ("image", "text")
    assert torch.equal(masks.a[0], image_positions)
    assert processor.tokenizer.decode(ids[masks.b[0]]).strip() == "A = 7"


def test_evidence_spans_need_the_instances():
    batch = {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3), "labels": torch.ones(1, 3)}
    with pytest.raises(ValueError, match="instances"):
        probe_masks(batch, 9, [], spans="evidence")
