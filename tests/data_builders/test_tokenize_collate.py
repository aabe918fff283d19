"""Token ids match the inference chat template, labels cover only answers, batches keep every rank's vision call."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.core.errors import ConfigError
from xmodal.core.tokens import IGNORE_INDEX
from xmodal.data_builders.tokenize import EncodingError, EncodingSettings, encode_instance, tokenize_instances
from xmodal.trainers.models.tiny import build_tiny_llava, build_tiny_qwen2_vl
from tests.support.tiny_batches import two_turn_instance

TEXT = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
BUILDERS = {
    "llava": lambda: build_tiny_llava(
        text=TEXT, vision=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4)
    ),
    "qwen2": lambda: build_tiny_qwen2_vl(
        text=TEXT, vision=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4)
    ),
}
# 32x32 images in 8x8 patches: LLaVA sees 16 patch tokens (CLS dropped); Qwen2-VL merges 2x2 patches -> 4.
IMAGE_TOKENS = {"llava": 16, "qwen2": 4}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request):
    model, processor = BUILDERS[request.param]()
    return request.param, model.eval(), processor


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "red.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(path)
    return str(path)


def test_ids_equal_the_inference_chat_template(family, image_path):
    name, _, processor = family
    instance = two_turn_instance(image_path)
    encoded = encode_instance(instance, processor, EncodingSettings())
    text = processor.apply_chat_template(instance["messages"], tokenize=False)
    reference = processor(text=[text], images=[Image.open(image_path).convert("RGB")], add_special_tokens=False)
    assert encoded["input_ids"] == list(reference["input_ids"][0])
    assert encoded["input_ids"].count(processor.image_token_id) == IMAGE_TOKENS[name]


def test_labels_cover_exactly_the_answers(family, image_path):
    name, _, processor = family
    encoded = encode_instance(two_turn_instance(image_path), processor, EncodingSettings())
    labelled = [i for i, label in enumerate(encoded["labels"]) if label != IGNORE_INDEX]
    assert all(encoded["labels"][i] == encoded["input_ids"][i] for i in labelled)
    answers = processor.tokenizer.decode([encoded["labels"][i] for i in labelled])
    end = processor.tokenizer.eos_token
    assert answers.replace(" ", "") == f"red{end}A=7{end}"
    assert processor.image_token_id not in [encoded["labels"][i] for i in labelled]


def test_unsupervised_turns_stay_unlabelled(family, image_path):
    name, _, processor = family
    instance = two_turn_instance(image_path)
    instance["messages"][1]["train"] = False
    encoded = encode_instance(instance, processor, EncodingSettings())
    answers = processor.tokenizer.decode([label for label in encoded["labels"] if label != IGNORE_INDEX])
    assert "red" not in answers and "7" in answers


def test_image_count_mismatch_names_instance_and_field(family, image_path):
    name, _, processor = family
    instance = {**two_turn_instance(image_path), "images": [image_path, image_path]}
    with pytest.raises(EncodingError, match=r"'two-turns'.*'images'"):
        encode_instance(instance, processor, EncodingSettings())


def test_overlong_instances_are_dropped_or_rejected_never_truncated(family, image_path, tmp_path):
    name, _, processor = family
    short = {"id": "short", "messages": two_turn_instance(image_path)["messages"][2:], "images": []}
    instances = [two_turn_instance(image_path), short]
    # The limit is the text-only instance's own length (it depends on the family's chat format).
    limit = len(encode_instance(short, processor, EncodingSettings())["input_ids"])
    kept = tokenize_instances(instances, processor, EncodingSettings(max_length=limit), str(tmp_path))
    assert len(kept) == 1 and processor.image_token_id not in kept[0]["input_ids"]
    with pytest.raises(EncodingError, match="exceed max_length"):
        encode_instance(instances[0], processor, EncodingSettings(max_length=limit, overlong="error"))


def test_tokenization_is_cached_between_runs(family, image_path, tmp_path):
    name, _, processor = family
    instances = [two_turn_instance(image_path)]
    first = tokenize_instances(instances, processor, EncodingSettings(), str(tmp_path))
    cache_file = first.cache_files[0]["filename"]
    written = os.stat(cache_file).st_mtime_ns
    second = tokenize_instances(instances, processor, EncodingSettings(), str(tmp_path))
    assert second.cache_files[0]["filename"] == cache_file and os.stat(cache_file).st_mtime_ns == written
    assert second[0]["input_ids"] == first[0]["input_ids"]


def test_text_only_batch_gets_an_invisible_blank_image(family, tmp_path):
    name, model, processor = family
    instance = {
        "id": "text",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Say yes."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
        ],
        "images": [],
    }
    encoded = encode_instance(instance, processor, EncodingSettings())
    batch = MultimodalCollator(processor)([encoded])
    length = len(encoded["input_ids"])
    assert (batch["input_ids"][0, length:] == processor.image_token_id).sum() == IMAGE_TOKENS[name]
    assert (batch["labels"][0, length:] == IGNORE_INDEX).all()
    labels = batch.pop("labels")
    with torch.no_grad():
        with_blank = model(**batch).logits[0, :length]
        alone = model(input_ids=torch.tensor([encoded["input_ids"]])).logits[0]
    torch.testing.assert_close(with_blank, alone, rtol=1e-5, atol=1e-5)
    assert labels.shape == batch["input_ids"].shape


def _paired_instance(image_path: str, colour: str, value: str) -> dict:
    """A two-turn instance answering `colour` and `A = value`, its teacher view stating the colour as a fact."""
    student = two_turn_instance(image_path)
    student["messages"][1] = {"role": "assistant", "content": [{"type": "text", "text": colour}]}
    student["messages"][3] = {"role": "assistant", "content": [{"type": "text", "text": f"A = {value}"}]}
    teacher = {"messages": [dict(m) for m in student["messages"]], "images": [image_path]}
    teacher["messages"][0] = {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": f"Facts: it is {colour}. What colour is it?"}],
    }
    return {**student, "teacher": teacher}


def test_paired_batch_stacks_student_then_teacher_rows(family, image_path):
    """Two different pairs: rows 0 and 1 are the students of pairs 0 and 1, rows 2 and 3 their teachers, in the
    same order (the alignment term pairs row i with row B + i)."""
    name, model, processor = family
    encoded = [encode_instance(_paired_instance(image_path, colour, value), processor, EncodingSettings())
               for colour, value in (("red", "7"), ("blue", "3"))]
    batch = MultimodalCollator(processor)(encoded)
    assert batch["branch"].tolist() == [0, 0, 1, 1]
    expected = [(e["input_ids"], e["labels"]) for e in encoded]
    expected += [(e["teacher_input_ids"], e["teacher_labels"]) for e in encoded]
    assert len({tuple(ids) for ids, _ in expected}) == 4  # four different rows: a swap would show
    rows = [
        (ids[mask.bool()].tolist(), labels[mask.bool()].tolist())
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True)
    ]
    assert rows == [(list(ids), list(labels)) for ids, labels in expected]
    batch.pop("labels"), batch.pop("branch")
    with torch.no_grad():
        assert model(**batch).logits.shape[0] == 4


def test_qwen2_training_prompt_is_the_checkpoint_format_system_prompt_included():
    # Qwen2.5-VL-7B-Instruct's own chat template (and the released evaluation's hand-written prompt) opens a
    # conversation without a system turn with "You are a helpful assistant."; training prompts must too.
    from xmodal.data_builders.templates import render_segments

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "\\boxed{3}"}]},
    ]
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Find x.<|im_end|>\n<|im_start|>assistant\n"
    )
    _, processor = BUILDERS["qwen2"]()
    segments = render_segments(processor, messages)
    assert segments == [(prompt, False), ("\\boxed{3}<|im_end|>", True), ("\n", False)]
    rendered = processor.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert rendered == prompt


TEXT_PARTS_ONLY = (
    "{% for message in messages %}{{ message['role'] }}: {% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
)


@pytest.mark.parametrize(
    "chat_template,problem", [(None, "has no chat template"), (TEXT_PARTS_ONLY, "writes nothing for an image")]
)
def test_a_template_that_cannot_train_stops_in_one_line(image_path, tmp_path, chat_template, problem):
    _, processor = BUILDERS["llava"]()
    processor.chat_template = chat_template
    with pytest.raises(ConfigError, match=problem) as refused:
        tokenize_instances([two_turn_instance(image_path)], processor, EncodingSettings(), str(tmp_path))
    assert "\n" not in str(refused.value)
