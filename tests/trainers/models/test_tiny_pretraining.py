"""The base-model stage: deterministic, its vision warm-up really learns, and its output is an ordinary checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.support.helpers import compose_config
from xmodal.core.tokens import IGNORE_INDEX
from xmodal.data_builders.tokenize import encode_view
from xmodal.trainers.models.tiny_pretraining import (
    _teacher_forced_exact,
    PretrainingError,
    PretrainingSettings,
    build_tiny_llava_base,
    pretrain,
    render_cell_images,
    text_qa_records,
    warm_up_vision_tower,
)
from xmodal.trainers.models import load_model, load_processor, materialise_init
from xmodal.trainers.models.tiny import build_tiny_llava

# Smaller than conf/model/tiny_llava_base.yaml, with the renderer's 64x64 images so a patch is a cell quarter.
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}
VISION = {
    "image_size": 64, "patch_size": 16, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4
}
# A handful of steps: enough to change every weight, far too few to pass the stage's accuracy checks.
SHORT_STAGE = {
    "train_records": 64,
    "held_out_records": 32,
    "classifier_steps": 3,
    "caption_steps": 3,
    "batch_size": 8,
    "min_classifier_accuracy": 0.0,
    "min_caption_exact_match": 0.0,
}


def build_short_base(cache_dir, seed: int = 0):
    torch.manual_seed(1234)  # the model's own init, as materialise_init seeds it
    stage = {**SHORT_STAGE, "seed": seed, "cache_dir": str(cache_dir)}
    return build_tiny_llava_base(text=TEXT, vision=VISION, vocab_size=512, stage=stage)


@pytest.fixture(scope="module")
def short_base(tmp_path_factory):
    return build_short_base(tmp_path_factory.mktemp("render"))


def test_same_seed_gives_identical_weights(short_base, tmp_path):
    model, _ = short_base
    again, _ = build_short_base(tmp_path)
    other_seed, _ = build_short_base(tmp_path, seed=1)
    weights, same_seed, different_seed = (m.state_dict() for m in (model, again, other_seed))
    assert all(torch.equal(weight, same_seed[name]) for name, weight in weights.items())
    assert not all(torch.equal(weight, different_seed[name]) for name, weight in weights.items())


def test_stage_trains_tower_projector_and_language_model(short_base):
    torch.manual_seed(1234)
    untouched, _ = build_tiny_llava(TEXT, VISION, vocab_size=512)
    model, _ = short_base
    before, after = untouched.state_dict(), model.state_dict()
    for component in ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head."):
        changed = [not torch.equal(after[name], before[name]) for name in after if name.startswith(component)]
        assert any(changed), component
    assert all(p.requires_grad for p in model.parameters())  # an ordinary model: fine-tuning decides freezing


def test_vision_warm_up_reads_cells_well_above_chance(tmp_path):
    torch.manual_seed(0)
    model, processor = build_tiny_llava(TEXT, VISION, vocab_size=512)
    settings = PretrainingSettings(
        train_records=800, held_out_records=128, classifier_steps=80, cache_dir=str(tmp_path)
    )
    train, held_out = render_cell_images(processor, VISION["image_size"], settings)
    assert len(held_out.records) > 50  # held-out images never appear in training
    majority = (held_out.cell_labels == held_out.cell_labels.flatten().mode().values).float().mean().item()
    accuracy = warm_up_vision_tower(model, train, held_out, settings)
    assert accuracy >= 0.9 > majority + 0.4


def test_too_short_a_warm_up_raises_instead_of_caching(tmp_path):
    stage = {**SHORT_STAGE, "min_classifier_accuracy": 0.9, "cache_dir": str(tmp_path)}
    with pytest.raises(PretrainingError, match="min_classifier_accuracy"):
        build_tiny_llava_base(text=TEXT, vision=VISION, vocab_size=512, stage=stage)


def test_base_saves_and_reloads_with_auto_classes(short_base, tmp_path):
    model, processor = short_base
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What are the facts?"}]}]
    prompt = reloaded_processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.new("RGB", (VISION["image_size"],) * 2, "white")
    inputs = reloaded_processor(text=[prompt], images=[image], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, reloaded(**inputs).logits, atol=1e-5)


@pytest.mark.parametrize("model_config", ["tiny_llava_base", "tiny_qwen2_vl_base"])
def test_shipped_config_materialises_through_the_model_cache(model_config, tmp_path):
    """The shipped configs' keys are their builder's arguments; the stage's output loads like any tiny model."""
    cfg = compose_config(
        [f"model={model_config}", f"cache_dir={tmp_path}"]
        + [f"model.init.stage.{key}={value}" for key, value in SHORT_STAGE.items()]
    )
    path = materialise_init(cfg.model.init, cfg.cache_dir, cfg.seed)
    assert Path(path).name.startswith(cfg.model.init._target_.rsplit(".", 1)[-1])
    load_model(path, cfg.model.dtype, cfg.model.attn_implementation)
    load_processor(path)


def test_text_qa_records_cover_every_language_pair_and_hold_out_unseen_questions():
    settings = PretrainingSettings(text_qa_records=64, held_out_text_qa_records=64)
    train, held_out = text_qa_records(settings)
    assert len(train) == 64 and 0 < len(held_out) <= 64
    pairs = [record["id"].split("/")[1] for record in train[:4]]
    assert pairs == ["en", "en-xx", "xx-en", "xx"]  # facts language - question language, in turn
    assert all(not record["images"] for record in train + held_out)  # text only: the LM's own reading
    seen = {(r["messages"][0]["content"][-1]["text"], r["target"]) for r in train}
    assert not any((r["messages"][0]["content"][-1]["text"], r["target"]) in seen for r in held_out)
    bilingual = next(r for r in train if r["id"].split("/")[1] == "en-xx")
    assert bilingual["messages"][0]["content"][-1]["text"].startswith("Facts: ") and bilingual["target"] in "abcdefghjk"


def test_stage_reports_text_qa_accuracy_when_taught(tmp_path):
    """The reported accuracy is the share of held-out text questions whose answer `generate` reproduces greedily,
    counted here one question at a time; 150 steps teach the tiny model some of them, so right and wrong both occur."""
    torch.manual_seed(1234)
    model, processor = build_tiny_llava(TEXT, VISION, vocab_size=512)
    settings = PretrainingSettings(**{**SHORT_STAGE, "text_qa_records": 16, "held_out_text_qa_records": 32,
                                      "caption_steps": 150, "learning_rate": 3e-3, "cache_dir": str(tmp_path)})
    scores = pretrain(model, processor, VISION["image_size"], settings)
    assert set(scores) == {"classifier_accuracy", "caption_exact_match", "text_qa_accuracy"}
    _, held_out = text_qa_records(settings)
    reproduced = []
    for record in held_out:
        row = encode_view(record["messages"], record["images"], processor, record["id"])
        supervised = [i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX]
        prompt, answer = row["input_ids"][:supervised[0]], [row["input_ids"][i] for i in supervised]
        with torch.no_grad():
            generated = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                       dtype=torch.long), do_sample=False, max_new_tokens=len(answer))
        reproduced.append(generated[0, len(prompt):].tolist() == answer)
    assert 0 < sum(reproduced) < len(reproduced)
    assert scores["text_qa_accuracy"] == pytest.approx(sum(reproduced) / len(reproduced))
    with pytest.raises(PretrainingError, match="text_qa_accuracy"):
        pretrain(model, processor, VISION["image_size"], replace(settings, min_text_qa_accuracy=1.01))


def test_an_answer_counts_as_exact_when_greedy_decoding_reproduces_it():
    """The stage's scorer (one teacher-forced forward) against `generate`: rows whose answer is the model's own
    greedy continuation score 1, the same rows with one answer token changed score 0."""
    torch.manual_seed(0)
    model, processor = build_tiny_llava(TEXT, VISION, vocab_size=512)
    model.eval()
    prompts = torch.randint(5, 500, (3, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        generated = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                   max_new_tokens=4, min_new_tokens=4)
    answers = generated[:, prompts.shape[1]:]
    labels = torch.cat([torch.full_like(prompts, IGNORE_INDEX), answers], dim=1)
    batch = {"input_ids": generated, "attention_mask": torch.ones_like(generated), "labels": labels}
    assert _teacher_forced_exact(model, dict(batch)) == [True, True, True]
    wrong = labels.clone()
    wrong[1, -2] = (wrong[1, -2] + 1) % 512  # row 1: one answer token that greedy decoding did not produce
    assert _teacher_forced_exact(model, dict(batch, labels=wrong)) == [True, False, True]
