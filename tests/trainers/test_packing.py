"""Padding-free packing: one row per batch whose sequences do not see each other, and the same loss and gradients."""

import math

import pytest
import torch

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.core.errors import ConfigError
from xmodal.losses import build_loss
from tests.support.helpers import FAST, loss_by_step, xmodal_train
from tests.support.tiny_batches import MODELS, encoded_instances
from xmodal.trainers.sft import loss_context


@pytest.fixture(scope="module")
def tiny_llava():
    build = MODELS["llava"]
    torch.manual_seed(0)
    model, processor = build()
    return model.double(), processor


def summed_loss_and_gradients(model, batch):
    """The LM loss as a SUM over targets (so padded and packed batches compare exactly) and its gradients."""
    model.zero_grad(set_to_none=True)
    composer = build_loss({"terms": {"lm": {"_target_": "xmodal.losses.lm.LMLoss"}}})
    context = loss_context(model, batch, composer, full_logits=False, num_items_in_batch=1)
    total, _ = composer(context)
    total.backward()
    return total.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_a_packed_batch_trains_exactly_like_the_padded_one(tiny_llava, tmp_path):
    model, processor = tiny_llava
    features = encoded_instances(tmp_path, processor, paired=False)
    padded = MultimodalCollator(processor)(features)
    packed = MultimodalCollator(processor, packing=True)(features)

    lengths = [len(f["input_ids"]) for f in features]
    assert len(set(lengths)) == 3  # different lengths: the padded batch holds padding, the packed one none
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == [p for length in lengths for p in range(length)]
    assert int((padded["attention_mask"] == 0).sum()) == 3 * max(lengths) - sum(lengths)

    padded_loss, padded_gradients = summed_loss_and_gradients(model, padded)
    packed_loss, packed_gradients = summed_loss_and_gradients(model, packed)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-12, atol=1e-12)
    assert packed_gradients.keys() == padded_gradients.keys()
    for name, gradient in padded_gradients.items():
        torch.testing.assert_close(packed_gradients[name], gradient, rtol=1e-9, atol=1e-12, msg=name)


def test_packing_refuses_paired_batches_and_m_rope_models(tiny_llava, tmp_path):
    model, processor = tiny_llava
    paired = encoded_instances(tmp_path, processor, paired=True)
    with pytest.raises(ConfigError, match="paired instances"):
        MultimodalCollator(processor, packing=True)(paired)
    _, qwen_processor = MODELS["qwen2"]()
    with pytest.raises(ConfigError, match="M-RoPE"):
        MultimodalCollator(qwen_processor, packing=True)


@pytest.mark.slow
def test_the_recipe_trains_packed_length_grouped_batches(tmp_path, cache_dir):
    out = str(tmp_path / "run")
    knobs = ["packing=true", "trainer.train_sampling_strategy=group_by_length",
             "finetune.activation_checkpointing=[language_model]"]
    xmodal_train([*FAST, *knobs, f"output_dir={out}"], cache_dir)
    losses = loss_by_step(out)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(loss) for loss in losses.values())

