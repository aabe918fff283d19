"""Tiny LLaVA / Qwen2-VL builders and real encoded instances of different lengths, for forward-path tests."""

from __future__ import annotations

from PIL import Image

from xmodal.data_builders.tokenize import EncodingSettings, encode_instance
from xmodal.trainers.models.tiny import build_tiny_llava, build_tiny_qwen2_vl

TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2}
# The sizes of the per-family tiny twins (32-pixel images, 4 heads): every architecture builds at these.
FAMILY_TEXT = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
FAMILY_VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4)
# name: builder of (model, processor)
MODELS = {
    "llava": lambda: build_tiny_llava(text=TEXT, vision={**VISION, "image_size": 16, "patch_size": 8}, vocab_size=400),
    "qwen2": lambda: build_tiny_qwen2_vl(text=TEXT, vision={**VISION, "image_size": 32, "patch_size": 8}, vocab_size=400),
}
QUESTIONS = ["Find x.", "What is the length of segment AB in the figure?", "Is the line red?"]
ANSWERS = ["12", "4 7", "yes"]


def instances(image_dir, paired: bool) -> list[dict]:
    """Three records of different prompt lengths; the teacher view states the facts as text, without the image."""
    built = []
    for index, (question, answer) in enumerate(zip(QUESTIONS, ANSWERS)):
        path = image_dir / f"figure_{index}.png"
        Image.new("RGB", (40, 40), (60 * index, 90, 200)).save(path)
        instance = {
            "id": f"record-{index}",
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ],
            "images": [str(path)],
        }
        if paired:
            facts = "The circle has centre O and radius 4; line AB is tangent. " * (index + 1)
            instance["teacher"] = {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": facts + question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
                "images": [],
            }
        built.append(instance)
    return built


def two_turn_instance(image_path: str) -> dict:
    """An image question, its answer, a text follow-up and its answer: two supervised turns."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "And the key?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A = 7"}]},
    ]
    return {"id": "two-turns", "messages": messages, "images": [image_path]}


def encoded_instances(image_dir, processor, paired: bool) -> list[dict]:
    """`instances` encoded as the training set encodes them."""
    settings = EncodingSettings(max_length=512)
    return [encode_instance(i, processor, settings) for i in instances(image_dir, paired)]
