"""`measure` (sdpa + span-indicator values) against eager attention probabilities, on both tiny families."""

from __future__ import annotations

import pytest
import torch
from tests.trainers.metrics.imbalance_support import left_padded, masks_of

from xmodal.trainers.metrics.imbalance import imbalance_from_probs, measure

PADDINGS = {"right": lambda batch: batch, "left": left_padded}


def eager_probs_and_values(model, batch):
    """Per-layer eager attention probabilities `[B, H, T, T]`, the layer inputs' values W_V x + b, and W_O."""
    values, captured = [], []
    layers = model.model.language_model.layers
    hooks = [
        layer.self_attn.v_proj.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        for layer in layers
    ]
    model.set_attn_implementation({"text_config": "eager"})
    try:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        with torch.no_grad():
            outputs = model(**inputs, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
        for hook in hooks:
            hook.remove()
    for layer, hidden in zip(layers, captured):
        v_proj = layer.self_attn.v_proj
        explicit = hidden @ v_proj.weight.T + (v_proj.bias if v_proj.bias is not None else 0)
        batch_size, length, _ = explicit.shape
        values.append(explicit.reshape(batch_size, length, -1, layer.self_attn.head_dim).transpose(1, 2))
    out_weights = torch.stack([layer.self_attn.o_proj.weight for layer in layers])
    return torch.stack(outputs.attentions, dim=1), torch.stack(values, dim=1), out_weights


@pytest.mark.parametrize("padding", sorted(PADDINGS))
@pytest.mark.parametrize("query", ["last_prompt", "answer"])
def test_weight_mode_equals_eager_reference(family, probe_batch, padding, query):
    _, model, processor = family
    batch = PADDINGS[padding](probe_batch)
    masks = masks_of(batch, model, processor, query=query)
    measured = measure(model, batch, masks.query, masks.a, masks.b)
    probs, _, _ = eager_probs_and_values(model, batch)
    assert measured.valid.all()
    for row in range(probs.shape[0]):
        reference = imbalance_from_probs(probs[row].double(), masks.query[row], masks.a[row], masks.b[row])
        for name, value in reference.as_dict().items():
            torch.testing.assert_close(getattr(measured.per_sequence, name)[row].double(), value, atol=1e-5, rtol=0)


def test_norm_mode_equals_explicit_wv_wo_computation(family, probe_batch):
    _, model, processor = family
    batch = left_padded(probe_batch)
    masks = masks_of(batch, model, processor)
    measured = measure(model, batch, masks.query, masks.a, masks.b, mode="norm")
    probs, values, out_weights = eager_probs_and_values(model, batch)
    for row in range(probs.shape[0]):
        reference = imbalance_from_probs(
            probs[row], masks.query[row], masks.a[row], masks.b[row], mode="norm", values=values[row], out_weight=out_weights
        )
        for name, value in reference.as_dict().items():
            torch.testing.assert_close(getattr(measured.per_sequence, name)[row], value, atol=1e-5, rtol=1e-5)


def test_selected_layers_and_batch_mean(family, probe_batch):
    _, model, processor = family
    masks = masks_of(probe_batch, model, processor)
    everything = measure(model, probe_batch, masks.query, masks.a, masks.b)
    last = measure(model, probe_batch, masks.query, masks.a, masks.b, layers=[1])
    assert last.layers == [1] and everything.layers == [0, 1]
    torch.testing.assert_close(last.per_sequence.ratio[:, 0], everything.per_sequence.ratio[:, 1])
    torch.testing.assert_close(everything.mean().mass_a, everything.per_sequence.mass_a.mean(0))


def test_sequence_without_image_tokens_is_left_out_of_the_mean(family, probe_batch):
    _, model, processor = family
    masks = masks_of(probe_batch, model, processor)
    masks.a[0] = False
    measured = measure(model, probe_batch, masks.query, masks.a, masks.b)
    assert measured.valid.tolist() == [False, True, True]
    assert measured.per_sequence.ratio[0].isnan().all()
    torch.testing.assert_close(measured.mean().ratio, measured.per_sequence.ratio[1:].mean(0))


def test_measuring_leaves_logits_and_attention_implementation_unchanged(family, probe_batch):
    _, model, processor = family
    batch = left_padded(probe_batch)
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    masks = masks_of(batch, model, processor)
    implementations = (model.config._attn_implementation, model.config.get_text_config()._attn_implementation)
    model.train()
    try:  # the module's shared model goes back to eval mode whatever happens here
        with torch.no_grad():
            before = model(**inputs).logits
            measure(model, batch, masks.query, masks.a, masks.b, mode="norm")
            after = model(**inputs).logits
        assert model.training
    finally:
        model.eval()
    assert torch.equal(before, after)
    assert (model.config._attn_implementation, model.config.get_text_config()._attn_implementation) == implementations


def test_probe_forward_logits_equal_plain_forward(family, probe_batch):
    """The wrapper's own output is the sdpa output: capture the logits of the probe forward itself."""
    _, model, processor = family
    batch = left_padded(probe_batch)
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    masks = masks_of(batch, model, processor)
    captured = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        measure(model, batch, masks.query, masks.a, masks.b)
    finally:
        hook.remove()
    with torch.no_grad():
        plain = model(**inputs, use_cache=False).logits
    assert torch.equal(captured[0], plain)
