"""Throughput knobs: activation checkpointing per component, Qwen2-VL pixel caps, attention selection."""

import copy
import importlib.util

import pytest
import torch
from PIL import Image

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.core.errors import ConfigError
from xmodal.losses import build_loss
from tests.support.tiny_batches import MODELS, encoded_instances
from xmodal.trainers.models.finetuning import FinetuneSettings, apply_finetuning, model_parts
from xmodal.trainers.models import set_image_pixels
from xmodal.trainers.models.loading import attention_implementation
from xmodal.trainers.sft import loss_context


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpointed_components_give_the_same_gradients(name, tmp_path):
    build = MODELS[name]
    torch.manual_seed(0)
    model, processor = build()
    model = model.double().train()
    batch = MultimodalCollator(processor)(encoded_instances(tmp_path, processor, paired=False))
    composer = build_loss({"terms": {"lm": {"_target_": "xmodal.losses.lm.LMLoss"}}})
    components = ["vision_tower", "language_model"]
    gradients = {}
    for checkpointed in ([], components):
        settings = FinetuneSettings(freeze_vision_tower=False, activation_checkpointing=checkpointed)
        trained = apply_finetuning(copy.deepcopy(model), settings)
        for component in components:
            module = trained.get_submodule(getattr(model_parts(trained), component))
            assert module.is_activation_checkpointing == (component in checkpointed)
        composer(loss_context(trained, batch, composer, full_logits=False))[0].backward()
        gradients[bool(checkpointed)] = {n: p.grad for n, p in trained.named_parameters() if p.grad is not None}
    assert any("vision" in n or "visual" in n for n in gradients[True])
    assert gradients[True].keys() == gradients[False].keys()
    for parameter, gradient in gradients[False].items():
        torch.testing.assert_close(gradients[True][parameter], gradient, rtol=1e-10, atol=1e-12, msg=parameter)


def test_unknown_checkpointed_component_is_refused():
    with pytest.raises(ValueError, match="unknown component"):
        FinetuneSettings(activation_checkpointing=["projector"])


def test_pixel_caps_bound_the_image_tokens_of_qwen2_vl():
    _, qwen = MODELS["qwen2"]()
    image = Image.new("RGB", (128, 96))
    uncapped = qwen.image_processor(images=[image], return_tensors="pt")["image_grid_thw"].prod()
    set_image_pixels(qwen, min_pixels=16 * 16, max_pixels=16 * 16)
    capped = qwen.image_processor(images=[image], return_tensors="pt")["image_grid_thw"].prod()
    assert capped == (16 // 8) ** 2 < uncapped  # patches of 8 px: a 16x16-pixel budget is a 2x2 grid
    _, llava = MODELS["llava"]()
    with pytest.raises(ConfigError, match="fixed size"):
        set_image_pixels(llava, max_pixels=1024)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU case; the GPU case is the test below")
def test_auto_attention_is_sdpa_without_a_gpu():
    assert attention_implementation("auto") == "sdpa"  # whether or not flash-attn is installed
    assert attention_implementation("eager") == "eager"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_auto_attention_picks_flash_attention_on_a_gpu_exactly_when_flash_attn_is_installed():
    installed = importlib.util.find_spec("flash_attn") is not None  # the package itself, not transformers' check
    assert attention_implementation("auto") == ("flash_attention_2" if installed else "sdpa")
