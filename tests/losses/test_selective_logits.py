"""Logits only at the targets (the trainer's default) give the loss values and gradients of the full-logits path.

Real tiny LLaVA and Qwen2-VL models in float64 (so only true differences show), batches made by the real
encoder and collator, every kind of built-in term, unpaired and paired batches, and through a PEFT wrapper.
"""

import copy

import pytest
import torch

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.losses import build_loss
from xmodal.losses.alignment import full_kl_per_position, full_kl_sum_in_chunks
from tests.support.tiny_batches import MODELS, encoded_instances
from xmodal.trainers.sft import loss_context

ALIGN = {"_target_": "xmodal.losses.alignment.AlignmentLoss", "weight": 0.5}
LOSSES = {
    "lm": {},
    "token_kl": {"align": ALIGN},
    "full_kl": {"align": {**ALIGN, "kind": "full", "direction": "js", "temperature": 2.0}},
    "hidden": {"align": {**ALIGN, "kind": "hidden", "layers": [1, -1]}},
    "frozen_token_kl": {"align": {**ALIGN, "teacher": "frozen"}},
    "frozen_full_kl": {"align": {**ALIGN, "kind": "full", "teacher": "frozen"}},
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_collator(request):
    build = MODELS[request.param]
    torch.manual_seed(0)
    model, processor = build()
    return model.double(), processor


def loss_and_gradients(model, batch, composer, full_logits: bool):
    model.zero_grad(set_to_none=True)
    context = loss_context(model, batch, composer, full_logits=full_logits, num_items_in_batch=None)
    total, logged = composer(context)
    total.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return total.detach(), logged, gradients, context.outputs.logits.shape


# Alignment terms read paired batches only (an unpaired one is refused, see test_alignment_term.py).
CASES = [("lm", False)] + [(loss, True) for loss in sorted(LOSSES)]


@pytest.mark.parametrize("loss, paired", CASES)
def test_target_logits_match_the_full_logits_path(model_and_collator, tmp_path, loss, paired):
    model, processor = model_and_collator
    batch = MultimodalCollator(processor)(encoded_instances(tmp_path, processor, paired))
    terms = {"lm": {"_target_": "xmodal.losses.lm.LMLoss"}, **LOSSES[loss]}

    full = loss_and_gradients(model, batch, build_loss({"terms": terms}), full_logits=True)
    selective = loss_and_gradients(model, batch, build_loss({"terms": terms}), full_logits=False)

    targets = int((batch["labels"][:, 1:] != -100).sum())
    rows, length = batch["input_ids"].shape
    assert full[3] == (rows, length, model.config.text_config.vocab_size)
    assert selective[3] == (targets, model.config.text_config.vocab_size)  # one logits row per target, no more
    torch.testing.assert_close(selective[0], full[0], rtol=1e-12, atol=1e-12)
    assert selective[1].keys() == full[1].keys()
    for name in full[1]:
        torch.testing.assert_close(selective[1][name], full[1][name], rtol=1e-12, atol=1e-12)
    assert selective[2].keys() == full[2].keys()
    assert "lm_head.weight" in full[2]
    for name, gradient in full[2].items():
        torch.testing.assert_close(selective[2][name], gradient, rtol=1e-9, atol=1e-12, msg=name)


def test_target_logits_through_a_peft_wrapper(model_and_collator, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, processor = model_and_collator
    torch.manual_seed(1)
    lora = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    )
    batch = MultimodalCollator(processor)(encoded_instances(tmp_path, processor, paired=True))
    composer = build_loss({"terms": {"lm": {"_target_": "xmodal.losses.lm.LMLoss"}, **LOSSES["full_kl"]}})
    full = loss_and_gradients(lora, batch, composer, full_logits=True)
    selective = loss_and_gradients(lora, batch, composer, full_logits=False)
    torch.testing.assert_close(selective[0], full[0], rtol=1e-12, atol=1e-12)
    assert any("lm_head.lora_B" in name for name in full[2])  # the LoRA-wrapped head got the gather too
    for name, gradient in full[2].items():
        torch.testing.assert_close(selective[2][name], gradient, rtol=1e-9, atol=1e-12, msg=name)


def test_a_term_reading_every_position_must_ask_for_full_logits(model_and_collator, tmp_path):
    model, processor = model_and_collator
    batch = MultimodalCollator(processor)(encoded_instances(tmp_path, processor, paired=False))
    composer = build_loss({"terms": {"lm": {"_target_": "xmodal.losses.lm.LMLoss"}}})
    context = loss_context(model, batch, composer, full_logits=False)
    with pytest.raises(ValueError, match="needs_full_logits = True"):
        context.logits


def test_chunked_full_kl_equals_the_unchunked_sum():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(7, 50, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(7, 50, generator=generator, dtype=torch.float64)
    for direction in ("forward", "reverse", "js"):
        whole = full_kl_per_position(student, teacher, direction, 1.5).sum()
        (whole_gradient,) = torch.autograd.grad(whole, student)
        chunked = full_kl_sum_in_chunks(student, teacher, direction, 1.5, chunk_elements=3 * 50)  # chunks 3, 3, 1
        (chunked_gradient,) = torch.autograd.grad(chunked, student)
        torch.testing.assert_close(chunked, whole, rtol=1e-14, atol=0)
        torch.testing.assert_close(chunked_gradient, whole_gradient, rtol=1e-14, atol=0)
