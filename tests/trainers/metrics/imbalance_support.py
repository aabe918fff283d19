"""Tiny models, instances and batches shared by the imbalance tests (and the torchrun probe script)."""

from __future__ import annotations

import torch
from PIL import Image

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.data_builders.tokenize import EncodingSettings, encode_instance
from xmodal.trainers.metrics.imbalance_probes import probe_masks
from xmodal.core.tokens import image_token_id
from xmodal.trainers.models.tiny import build_tiny_llava, build_tiny_qwen2_vl

TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}
BUILDERS = {
    "llava": lambda: build_tiny_llava(
        text=TEXT,
        vision={"image_size": 16, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2},
        vocab_size=400,
    ),
    "qwen2": lambda: build_tiny_qwen2_vl(
        text=TEXT,
        vision={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2},
        vocab_size=400,
    ),
}
QUESTIONS = ["What is the colour of the circle?", "Find the angle.", "Is the line red? Answer with yes or no."]


def make_instances(image_dir, count: int) -> list[dict]:
    instances = []
    for index in range(count):
        path = image_dir / f"image_{index}.png"
        Image.new("RGB", (40, 40), (40 * index, 90, 200 - 30 * index)).save(path)
        question = QUESTIONS[index % len(QUESTIONS)] * (1 + index % 2)  # different lengths -> padding
        instances.append(
            {
                "id": f"probe-{index}",
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "red" if index % 2 else "yes"}]},
                ],
                "images": [str(path)],
            }
        )
    return instances


def collate(instances, processor) -> dict:
    settings = EncodingSettings(max_length=512)
    encoded = [encode_instance(instance, processor, settings) for instance in instances]
    return MultimodalCollator(processor)(encoded)


def left_padded(batch: dict) -> dict:
    """The same rows moved to the right end of the padded length (left padding)."""
    shifted = dict(batch)
    lengths = batch["attention_mask"].sum(-1)
    for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids"):
        if key in batch:
            rows = [torch.roll(row, int(row.shape[0] - length)) for row, length in zip(batch[key], lengths)]
            shifted[key] = torch.stack(rows)
    return shifted


def masks_of(batch, model, processor, query="last_prompt"):
    return probe_masks(batch, image_token_id(model.config), processor.tokenizer.all_special_ids, query=query)
