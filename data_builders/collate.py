"""Pad encoded instances into model batches, load their images, and stack paired views as student/teacher rows."""

from __future__ import annotations

import torch
from PIL import Image

from xmodal.core.errors import ConfigError
from xmodal.data_builders.templates import image_text
from xmodal.core.tokens import IGNORE_INDEX
from xmodal.data_builders.tokenize import load_rgb


class MultimodalCollator:
    """Collates `tokenize_instances` rows into the model's inputs plus `labels` (and `branch` for pairs).

    Every batch calls the vision tower: a batch without images gets one blank image appended after the
    last token of its first row, unsupervised and, being last, invisible to every real token under causal
    attention. Under ZeRO-2/3 a rank whose batch skipped the vision tower would otherwise desynchronise
    the collectives of the ranks whose batch did not.

    `packing=True` puts a batch's sequences into one padding-free row (see `pack_rows`): no pad token is
    computed. It needs a model with 1-D position ids (LLaVA; Qwen2-VL's M-RoPE positions are computed per
    row) and unpaired instances (paired views must stay rows of their own).
    """

    def __init__(self, processor, pad_to_multiple_of: int | None = None, packing: bool = False):
        if packing and processor.return_mm_token_type_ids:
            raise ConfigError(
                f"packing: {type(processor).__name__} models read per-row token types (M-RoPE position ids, attention "
                "within an image), which packed rows cannot restart; set packing=false (length-grouped sampling still "
                "cuts padding)"
            )
        self.packing = packing
        self.processor = processor
        self.image_text = image_text(processor)
        self.pad_id = processor.tokenizer.pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self._placeholder = None  # (token ids, image) of the blank image, built on first use

    def __call__(self, features: list[dict]) -> dict:
        rows = [(f["input_ids"], f["labels"], f["images"]) for f in features]
        paired = "teacher_input_ids" in features[0]
        if paired:
            rows += [(f["teacher_input_ids"], f["teacher_labels"], f["teacher_images"]) for f in features]
        input_ids = [list(ids) for ids, _, _ in rows]
        labels = [list(lab) for _, lab, _ in rows]
        # The model consumes image features in row-major order of their placeholder tokens.
        images = [load_rgb(path) for _, _, paths in rows for path in paths]
        if not images:
            placeholder_ids, blank = self._blank_image()
            input_ids[0] = input_ids[0] + placeholder_ids
            labels[0] = labels[0] + [IGNORE_INDEX] * len(placeholder_ids)
            images = [blank]
        if self.packing:
            if paired:
                raise ConfigError("packing: paired instances (builder emit=both) keep their views as rows; set packing=false")
            batch = pack_rows(input_ids, labels)
        else:
            batch = pad_rows(input_ids, labels, self.pad_id, self.pad_to_multiple_of)
        batch.update(self.processor.image_processor(images=images, return_tensors="pt"))
        if self.processor.return_mm_token_type_ids:
            # Image positions, as the processor marks them at inference: Qwen-VL's M-RoPE reads them
            # (`mm_token_type_ids`), Gemma 3's bidirectional attention within an image too (`token_type_ids`).
            key = "mm_token_type_ids" if "mm_token_type_ids" in self.processor.model_input_names else "token_type_ids"
            batch[key] = torch.tensor(self.processor.create_mm_token_type_ids(batch["input_ids"]))
        if paired:
            batch["branch"] = torch.tensor([0] * len(features) + [1] * len(features))
        return batch

    def _blank_image(self) -> tuple[list[int], Image.Image]:
        if self._placeholder is None:
            blank = Image.new("RGB", _blank_size(self.processor.image_processor), (0, 0, 0))
            ids = self.processor(text=[self.image_text], images=[blank], add_special_tokens=False)["input_ids"][0]
            self._placeholder = (list(ids), blank)
        return self._placeholder


def pad_rows(
    input_ids: list[list[int]], labels: list[list[int]], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict:
    """Right-pad rows of token ids and labels into `input_ids`, `attention_mask` and `labels` tensors."""
    length = max(len(ids) for ids in input_ids)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    ids_tensor = torch.full((len(input_ids), length), pad_id, dtype=torch.long)
    labels_tensor = torch.full((len(input_ids), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(input_ids), length), dtype=torch.long)
    for row, (ids, lab) in enumerate(zip(input_ids, labels)):
        ids_tensor[row, : len(ids)] = torch.tensor(ids)
        labels_tensor[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": ids_tensor, "attention_mask": mask, "labels": labels_tensor}


def pack_rows(input_ids: list[list[int]], labels: list[list[int]]) -> dict:
    """Concatenate rows into one padding-free row whose `position_ids` restart at 0 for every sequence.

    No `attention_mask`: from restarting position ids transformers builds a block-diagonal causal mask
    (sdpa, eager) or runs variable-length flash attention (flash_attention_2), so no sequence attends to
    another. Each sequence's first label is ignored, so no sequence's first token is predicted from the
    previous sequence's last one (it is a prompt token, unlabelled anyway).
    """
    first_ignored = [[IGNORE_INDEX] + list(lab[1:]) for lab in labels]
    return {
        "input_ids": torch.tensor([[token for ids in input_ids for token in ids]]),
        "labels": torch.tensor([[label for lab in first_ignored for label in lab]]),
        "position_ids": torch.cat([torch.arange(len(ids)) for ids in input_ids]).unsqueeze(0),
    }


def _blank_size(image_processor) -> tuple[int, int]:
    crop = getattr(image_processor, "crop_size", None)
    if isinstance(crop, dict) and "height" in crop:
        return crop["width"], crop["height"]
    # Qwen2-VL: the smallest image that fills one merged patch grid cell in each direction.
    patch = getattr(image_processor, "patch_size", 14) * getattr(image_processor, "merge_size", 2)
    return patch * 2, patch * 2
