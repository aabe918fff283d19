"""End to end on a real (tiny) LLaVA: one forward over a paired batch, the composer, and the frozen teacher."""

from types import SimpleNamespace

import pytest
import torch

from xmodal.data_builders.collate import pad_rows
from xmodal.losses import LossContext, build_loss
from xmodal.losses.alignment import AlignmentLoss
from xmodal.losses.teacher import teacher_inputs
from xmodal.trainers.models.tiny import build_tiny_llava
from tests.support.helpers import move_every_floating_tensor

IMAGE_TOKENS = 4  # (16 / 8) ** 2 patches, CLS dropped by the "default" strategy


def _build_tiny_llava():
    torch.manual_seed(0)
    model, processor = build_tiny_llava(
        text=dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1),
        vision=dict(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2),
    )
    return model, processor.tokenizer


@pytest.fixture(scope="module")
def tiny_llava():
    """Shared by the tests that only read the model; a test that changes weights builds its own."""
    return _build_tiny_llava()


def _paired_batch(tokenizer, image_token_id):
    """Two pairs; the teacher prompts carry extra 'facts' tokens, so their responses sit further right."""
    generator = torch.Generator().manual_seed(1)
    responses = [[40, 41, 42, tokenizer.eos_token_id], [50, 51, tokenizer.eos_token_id]]
    prompt_lengths = [3, 5, 9, 7]  # student 0, student 1, teacher 0, teacher 1
    rows, labels = [], []
    for row, prompt_length in enumerate(prompt_lengths):
        response = responses[row % 2]
        prompt = [tokenizer.bos_token_id] + [image_token_id] * IMAGE_TOKENS
        prompt += torch.randint(10, 200, (prompt_length,), generator=generator).tolist()
        rows.append(prompt + response)
        labels.append([-100] * len(prompt) + response)
    return {
        **pad_rows(rows, labels, tokenizer.pad_token_id),
        "pixel_values": torch.randn(4, 3, 16, 16, generator=generator),
        "branch": torch.tensor([0, 0, 1, 1]),
    }


def _forward(model, batch, hidden=False):
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "branch")}
    return model(**inputs, output_hidden_states=hidden)


def test_composer_on_a_real_forward(tiny_llava):
    model, tokenizer = tiny_llava
    batch = _paired_batch(tokenizer, model.config.image_token_id)
    composer = build_loss({"terms": {"lm": {"_target_": "xmodal.losses.lm.LMLoss"}, "align": {"_target_": "xmodal.losses.alignment.AlignmentLoss", "weight": 0.01}}})
    outputs = _forward(model, batch, composer.needs_hidden_states)
    total, logged = composer(LossContext(model=model, batch=batch, outputs=outputs))
    reference = model(**{k: v for k, v in batch.items() if k != "branch"}).loss  # HF's own shifted CE
    torch.testing.assert_close(logged["lm_loss"], reference.detach(), rtol=1e-5, atol=1e-6)
    # The alignment term as logged is the term computed on its own, and the total is their weighted sum.
    alone = AlignmentLoss()(LossContext(model=model, batch=batch, outputs=_forward(model, batch)))
    torch.testing.assert_close(logged["align_loss"], alone.detach())
    assert logged["align_loss"] > 0  # the two views' prompts differ: a zero would mean the rows were not paired
    torch.testing.assert_close(total.detach(), logged["lm_loss"] + 0.01 * logged["align_loss"])
    model.zero_grad()
    total.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad()


@pytest.mark.parametrize("kind", ["token", "full", "hidden"])
def test_frozen_teacher_equals_the_shared_forward_before_training(tiny_llava, kind):
    model, tokenizer = tiny_llava
    batch = _paired_batch(tokenizer, model.config.image_token_id)
    outputs = _forward(model, batch, hidden=kind == "hidden")
    ctx = LossContext(model=model, batch=batch, outputs=outputs)
    same = AlignmentLoss(kind=kind, teacher="same")(ctx)
    frozen_term = AlignmentLoss(kind=kind, teacher="frozen")
    frozen = frozen_term(ctx)
    torch.testing.assert_close(frozen, same, rtol=1e-4, atol=1e-6)
    assert not any(p.requires_grad for p in frozen_term.frozen_teacher.model.parameters())


def test_frozen_teacher_keeps_the_initial_weights():
    """The teacher is the student as it was at the first call, every tensor (norms and biases included), and stays
    so when every tensor of the student moves."""
    model, tokenizer = _build_tiny_llava()  # its own model: the test moves the student's weights
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    batch = _paired_batch(tokenizer, model.config.image_token_id)
    term = AlignmentLoss(teacher="frozen")
    initial_outputs = _forward(model, batch)
    term(LossContext(model=model, batch=batch, outputs=initial_outputs)).backward()
    teacher = term.frozen_teacher.model
    move_every_floating_tensor(model)
    moved_outputs = _forward(model, batch)
    value = term(LossContext(model=model, batch=batch, outputs=moved_outputs))
    assert teacher is term.frozen_teacher.model and teacher.state_dict().keys() == initial.keys()
    # The term aligns the moved student rows with the initial model's teacher rows, not with the moved ones.
    pairs = 2
    initial_teacher = SimpleNamespace(logits=torch.cat([moved_outputs.logits[:pairs], initial_outputs.logits[pairs:]]))
    expected = AlignmentLoss(teacher="same")(LossContext(model=model, batch=batch, outputs=initial_teacher))
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)
    moved_teacher = AlignmentLoss(teacher="same")(LossContext(model=model, batch=batch, outputs=moved_outputs))
    assert value.item() != pytest.approx(moved_teacher.item(), rel=1e-2)
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, initial[name]), name
        assert not tensor.is_floating_point() or not torch.equal(tensor, model.state_dict()[name]), name


def test_teacher_inputs_split_qwen2_vl_patches_by_image():
    image_token = 7
    grids = torch.tensor([[1, 4, 4], [1, 2, 4], [1, 4, 4], [1, 2, 2]])  # 4, 2, 4, 1 tokens after 2x2 merging
    tokens_per_row = [4, 2, 4, 1]
    input_ids = torch.zeros(4, 8, dtype=torch.long)
    for row, count in enumerate(tokens_per_row):
        input_ids[row, 1 : 1 + count] = image_token
    patch_image = torch.repeat_interleave(torch.arange(4), grids.prod(-1))
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones(4, 8, dtype=torch.long),
        "mm_token_type_ids": (input_ids == image_token).long(),
        "position_ids": torch.arange(8).expand(3, 4, 8),
        "pixel_values": patch_image.float().unsqueeze(-1).expand(-1, 5),
        "image_grid_thw": grids,
        "labels": torch.zeros(4, 8, dtype=torch.long),
        "branch": torch.tensor([0, 0, 1, 1]),
    }
    inputs = teacher_inputs(batch, num_pairs=2, image_token_id=image_token)
    row_keys = {"input_ids", "attention_mask", "mm_token_type_ids", "position_ids"}
    assert set(inputs) == row_keys | {"pixel_values", "image_grid_thw"}
    assert torch.equal(inputs["input_ids"], input_ids[2:])
    assert inputs["position_ids"].shape == (3, 2, 8)
    assert torch.equal(inputs["image_grid_thw"], grids[2:])
    assert inputs["pixel_values"][:, 0].unique().tolist() == [2.0, 3.0]
    assert inputs["pixel_values"].shape[0] == 16 + 4


def test_teacher_inputs_leave_out_images_the_teacher_rows_do_not_have():
    # The collator's blank image (for image-less batches) sits in row 0, a student row.
    input_ids = torch.tensor([[1, 7, 7], [1, 2, 0], [1, 3, 0], [1, 4, 0]])
    batch = {"input_ids": input_ids, "pixel_values": torch.zeros(1, 3, 16, 16), "branch": torch.tensor([0, 0, 1, 1])}
    assert set(teacher_inputs(batch, num_pairs=2, image_token_id=7)) == {"input_ids"}


def test_teacher_inputs_refuse_unknown_keys():
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "pixel_attention_mask": torch.ones(2, 3)}
    with pytest.raises(ValueError, match="pixel_attention_mask"):
        teacher_inputs(batch, num_pairs=1, image_token_id=None)
