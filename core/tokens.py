"""Token ids every layer agrees on: the label that no loss reads, and the image placeholder of a model."""

from __future__ import annotations

IGNORE_INDEX = -100  # a label position no loss term reads (PyTorch's cross-entropy default)


def image_token_id(model_config) -> int:
    """The placeholder id the processor expands into image tokens (LLaVA: `image_token_index` in older configs)."""
    for name in ("image_token_id", "image_token_index"):
        token_id = getattr(model_config, name, None)
        if token_id is not None:
            return token_id
    raise ValueError(f"{type(model_config).__name__} names no image token id")
