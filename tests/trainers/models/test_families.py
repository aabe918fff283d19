"""Every supported architecture through the same table: its tiny offline twin's labels are its template's assistant
tokens, full and LoRA steps lower the loss with the freeze switches honoured, resume is exact, `measure()` equals
eager attention, and a saved checkpoint reloads and generates through the evaluation path."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import TrainingArguments

from xmodal.core.tokens import IGNORE_INDEX, image_token_id
from xmodal.data_builders.collate import MultimodalCollator
from xmodal.data_builders.tokenize import EncodingSettings, encode_instance
from xmodal.losses import build_loss
from xmodal.trainers.evaluation.answers import (
    EvalItem,
    GenerationSettings,
    generation_prompt,
    predict,
    prompt_inputs,
    training_prompt_ids,
)
from xmodal.trainers.metrics.imbalance import _text_only, imbalance_from_probs, measure
from xmodal.trainers.metrics.imbalance_probes import probe_masks
from xmodal.trainers.models import load_for_inference, tiny
from xmodal.trainers.models.finetuning import (
    FinetuneSettings,
    LoraSettings,
    apply_finetuning,
    model_parts,
    unwrapped_name,
)
from xmodal.trainers.sft import XModalSFTTrainer
from tests.support.helpers import move_every_floating_tensor
from tests.support.tiny_batches import FAMILY_TEXT, FAMILY_VISION, two_turn_instance

TEXT, VISION = FAMILY_TEXT, FAMILY_VISION
FAMILIES = ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "gemma3", "internvl"]
# The supervised text of the two assistant turns, written from each family's chat format: the answer and its
# end-of-turn marker (the model learns to stop), never the whitespace after the marker.
_VICUNA, _CHATML = [" red</s>", " A = 7</s>"], ["red<|im_end|>", "A = 7<|im_end|>"]
ANSWERS = {
    "llava": _VICUNA,
    "llava_next": _VICUNA,
    "qwen2_vl": _CHATML,
    "qwen2_5_vl": _CHATML,
    "qwen3_vl": _CHATML,
    "internvl": _CHATML,
    "idefics3": [" red<end_of_utterance>", " A = 7<end_of_utterance>"],
    "gemma3": ["red<end_of_turn>", "A = 7<end_of_turn>"],
}
# Image tokens of one 32x32 image in 8x8 patches (a 4x4 grid): LLaVA keeps all 16 patches; the Qwen-VL mergers,
# Idefics3's and InternVL's pixel shuffles and Gemma 3's pooling fold 2x2 patches into one token (4); LLaVA-NeXT
# adds to the 16 base patches one 32x32 tile of 16 patches plus a newline per patch row (16 + 16 + 4).
IMAGE_TOKENS = {
    "llava": 16, "llava_next": 36, "qwen2_vl": 4, "qwen2_5_vl": 4, "qwen3_vl": 4, "idefics3": 4, "gemma3": 4,
    "internvl": 4,
}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "red.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    return str(path)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    torch.manual_seed(0)
    model, processor = getattr(tiny, f"build_tiny_{request.param}")(text=TEXT, vision=VISION, vocab_size=384)
    return request.param, model, processor


def _batch(processor, image_path: str) -> dict:
    return MultimodalCollator(processor)([encode_instance(two_turn_instance(image_path), processor, EncodingSettings())])


def _supervised_runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs, current = runs + [current], []
    return runs


def test_labels_are_the_assistant_tokens_of_the_template(family, image_path):
    name, model, processor = family
    instance = two_turn_instance(image_path)
    encoded = encode_instance(instance, processor, EncodingSettings())
    answers = [processor.tokenizer.decode(run) for run in _supervised_runs(encoded["labels"])]
    assert answers == ANSWERS[name]
    whole = processor.apply_chat_template(instance["messages"], tokenize=False)
    image = Image.open(image_path).convert("RGB")
    reference = processor(text=[whole], images=[image], add_special_tokens=False, return_tensors="pt")
    assert encoded["input_ids"] == reference["input_ids"][0].tolist()
    # The token types some families read (Qwen-VL's M-RoPE, Gemma 3's attention within an image) as at inference.
    batch = MultimodalCollator(processor)([encoded])
    for key in {"mm_token_type_ids", "token_type_ids"} & set(processor.model_input_names):
        assert torch.equal(batch[key], reference[key]), key
    assert encoded["input_ids"].count(image_token_id(model.config)) == IMAGE_TOKENS[name]
    item = EvalItem("two-turns", "default", instance["messages"], instance["images"], "A = 7")
    prompt = prompt_inputs([generation_prompt(item, processor)], [item], processor)["input_ids"][0].tolist()
    assert prompt == training_prompt_ids(item, processor)


def _moved(before: dict, model) -> set[str]:
    """Components with a parameter that differs from `before` (names as in the bare model)."""
    parts = model_parts(model)
    moved = set()
    for name, parameter in model.named_parameters():
        original = before.get(unwrapped_name(name).replace(".base_layer", ""))  # LoRA keeps the base weight there
        if original is not None and not torch.equal(original, parameter.detach()):
            moved.add(parts.component_of(name))
    return moved


def _steps(model, batch, steps: int, lr: float) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**{k: v for k, v in batch.items() if k != "branch"}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "settings,trained",
    [
        (FinetuneSettings(freeze_vision_tower=True), {"projector", "language_model"}),
        (FinetuneSettings(freeze_vision_tower=False, freeze_language_model=True), {"vision_tower", "projector"}),
        (FinetuneSettings(mode="lora", freeze_projector=False, lora=LoraSettings(r=4)), {"projector", "language_model"}),
    ],
    ids=["full", "full_lm_frozen", "lora"],
)
def test_steps_lower_the_loss_and_move_only_unfrozen_components(family, image_path, settings, trained):
    _, model, processor = family
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    wrapped = apply_finetuning(copy.deepcopy(model), settings)
    # LoRA's adapters start at zero and take a larger rate; full fine-tuning overshoots at it.
    losses = _steps(wrapped, _batch(processor, image_path), steps=3, lr=1e-2 if settings.mode == "lora" else 1e-3)
    assert losses[-1] < losses[0]
    # LoRA: the LM moves through its adapters only; its base weights stay as they were.
    assert _moved(before, wrapped) == (trained - {"language_model"} if settings.mode == "lora" else trained)
    if settings.mode == "lora":
        assert any("lora_" in name and p.requires_grad for name, p in wrapped.named_parameters())


def test_resume_continues_exactly(family, image_path, tmp_path):
    _, model, processor = family
    batch_rows = [encode_instance(two_turn_instance(image_path), processor, EncodingSettings())] * 4

    def run(max_steps: int, resume: str | None = None):
        torch.manual_seed(0)
        args = TrainingArguments(
            output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=2, learning_rate=1e-2,
            save_steps=1, save_strategy="steps", report_to=[], logging_steps=1, use_cpu=True, seed=0,
            remove_unused_columns=False, disable_tqdm=True,
        )
        trainer = XModalSFTTrainer(
            model=apply_finetuning(copy.deepcopy(model), FinetuneSettings(freeze_vision_tower=False)),
            args=args,
            train_dataset=batch_rows,
            data_collator=MultimodalCollator(processor),
            processing_class=processor,
            loss_composer=build_loss({"terms": {"lm": {"_target_": "xmodal.losses.lm.LMLoss"}}}),
        )
        trainer.train(resume_from_checkpoint=resume)
        return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}

    straight = run(2)
    resumed = run(2, resume=str(tmp_path / "checkpoint-1"))
    for name, tensor in straight.items():
        assert torch.equal(resumed[name], tensor), name


def test_measure_equals_eager_attention(family, image_path):
    _, model, processor = family
    model = model.eval()
    batch = _batch(processor, image_path)
    masks = probe_masks(batch, image_token_id(model.config), processor.tokenizer.all_special_ids, query="last_prompt")
    measured = measure(model, batch, masks.query, masks.a, masks.b)
    text_config = model.config.get_text_config()
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    model.set_attn_implementation(_text_only(model.config, text_config, "eager"))
    try:
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation(_text_only(model.config, text_config, "sdpa"))
    probs = torch.stack(attentions, dim=1)[0].double()  # [L, H, T, T]
    assert measured.valid.all() and len(measured.layers) == TEXT["num_layers"]
    reference = imbalance_from_probs(probs, masks.query[0], masks.a[0], masks.b[0])
    for name, value in reference.as_dict().items():
        torch.testing.assert_close(getattr(measured.per_sequence, name)[0].double(), value, atol=1e-5, rtol=0)


def test_a_saved_checkpoint_reloads_and_generates(family, image_path, tmp_path):
    """Every tensor comes back (each moved off its init first: a loader skipping norms or biases would otherwise
    match a fresh init), and the reloaded model and processor answer as the saved ones do."""
    _, model, processor = family
    saved = copy.deepcopy(model).eval()
    move_every_floating_tensor(saved)
    saved.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded, reloaded_processor = load_for_inference(str(tmp_path), "float32", "sdpa")
    for name, tensor in saved.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    instance = two_turn_instance(image_path)
    items = [EvalItem("two-turns", "default", instance["messages"], instance["images"], "A = 7"),
             EvalItem("text", "default", instance["messages"][2:], [], "A = 7")]
    settings = GenerationSettings(2, max_new_tokens=3)
    predictions = predict(reloaded, reloaded_processor, items, settings)
    assert all(prediction.prompt_matches_training for prediction in predictions)
    assert [p.answers for p in predictions] == [p.answers for p in predict(saved, processor, items, settings)]
    assert all(prediction.answers[0] for prediction in predictions)  # something was generated


@pytest.mark.slow
@pytest.mark.distributed
def test_one_zero2_step_of_every_family_on_two_ranks(tmp_path):
    """One torchrun for the whole table (a launch per family would cost the suite minutes): each family takes a
    ZeRO-2 step with the projector's learning rate at 0, so the per-component groups reach DeepSpeed too."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": root}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        os.path.join(here, "zero2_probe.py"), str(tmp_path), *FAMILIES,
    ]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0] == ranks[1]  # ZeRO-2 keeps every rank's full weights identical, losses all-reduced
    for family in FAMILIES:
        assert ranks[0][family]["loss"] is not None, family
        assert ranks[0][family]["moved"] == {"vision_tower": True, "projector": False, "language_model": True}, family
