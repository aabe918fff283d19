"""The frozen teacher of the alignment loss: a no-grad copy of the initial model run on the teacher rows."""

from __future__ import annotations

import copy
from typing import Any

import torch

from xmodal.core.tokens import image_token_id
from xmodal.losses.base import LossContext
from xmodal.losses.selective import forward_with_target_logits

# Keys of a batch that are not model inputs (the trainer pops them before its forward too).
_NOT_MODEL_INPUTS = ("labels", "branch")
# Per-row model inputs: the row axis is the second-to-last one ([N, T], or [3, N, T] for M-RoPE positions).
_ROW_INPUTS = ("input_ids", "attention_mask", "position_ids", "mm_token_type_ids", "token_type_ids")
# Per-image inputs, concatenated in row order by the collator: split where the student rows' images end.
_IMAGE_INPUTS = ("pixel_values", "image_grid_thw", "image_sizes")


class FrozenTeacher:
    """Deep-copies the model the first time it is called, i.e. before the first optimizer step.

    On resume the copy is taken from the resumed weights, not from the initial ones: a resumed `teacher:
    frozen` run is therefore not bit-identical to an uninterrupted one. ZeRO-3 partitions the parameters,
    so a copy would be empty; that setting is refused with a clear message.
    """

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None

    @torch.no_grad()
    def __call__(self, ctx: LossContext, output_hidden_states: bool) -> Any:
        """Model outputs for the teacher rows [B, 2B) of the paired batch; `logits` are `[M_teacher, V]`, at
        the teacher rows' target prediction positions only (see `xmodal.losses.selective`)."""
        if self.model is None:
            self.model = _frozen_copy(ctx.model)
        inputs = teacher_inputs(ctx.batch, ctx.num_pairs, image_token_id(self.model.config))
        teacher_labels = ctx.labels[ctx.num_pairs :]
        return forward_with_target_logits(self.model, inputs, teacher_labels, output_hidden_states=output_hidden_states)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):  # DDP / DeepSpeed engines wrap the model in `.module`
        model = model.module
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        raise ValueError("teacher: frozen cannot copy a ZeRO-3 partitioned model; use teacher: same or ZeRO-2")
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


def teacher_inputs(batch: dict[str, Any], num_pairs: int, image_token_id: int | None) -> dict[str, Any]:
    """The model inputs of rows [num_pairs, 2 * num_pairs) of a paired batch.

    Images are stored per image, not per row, in row order: the teacher's images are those after the
    student rows' image tokens are used up (per-image token counts come from `image_grid_thw` when the
    model has one, else every image has the same count).
    """
    inputs = {}
    for key, value in batch.items():
        if key in _NOT_MODEL_INPUTS or value is None:
            continue
        if key in _ROW_INPUTS:
            inputs[key] = value.narrow(-2, num_pairs, num_pairs)
        elif key in _IMAGE_INPUTS:
            continue
        else:
            raise ValueError(f"teacher: frozen does not know how to split batch key {key!r} by rows")
    if "pixel_values" in batch:
        inputs.update(_teacher_images(batch, num_pairs, image_token_id))
    return inputs


def _teacher_images(batch: dict[str, Any], num_pairs: int, image_token_id: int | None) -> dict[str, torch.Tensor]:
    image_tokens = batch["input_ids"] == image_token_id
    total_tokens, student_tokens = int(image_tokens.sum()), int(image_tokens[:num_pairs].sum())
    grid = batch.get("image_grid_thw")
    if grid is not None:
        # Qwen2-VL: one pixel_values row per patch; spatial merging turns a fixed number of patches into a token.
        rows_per_image = grid.prod(dim=-1)
        tokens_per_image = rows_per_image * total_tokens // int(rows_per_image.sum())
    else:
        # LLaVA: one pixel_values row per image, every image expanded to the same number of tokens.
        rows_per_image = torch.ones(batch["pixel_values"].shape[0], dtype=torch.long)
        tokens_per_image = rows_per_image * total_tokens // max(len(rows_per_image), 1)
    boundaries = torch.cat([tokens_per_image.new_zeros(1), tokens_per_image.cumsum(0)])
    matches = (boundaries == student_tokens).nonzero().flatten()
    if matches.numel() == 0:
        raise ValueError("teacher: frozen could not split the batch's images between student and teacher rows")
    student_images = int(matches[0])
    if student_images == len(tokens_per_image):  # e.g. the collator's blank image, appended to row 0
        return {}
    images = {"pixel_values": batch["pixel_values"][int(rows_per_image[:student_images].sum()) :]}
    for key in ("image_grid_thw", "image_sizes"):
        if batch.get(key) is not None:
            images[key] = batch[key][student_images:]
    return images
