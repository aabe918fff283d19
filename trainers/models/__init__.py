"""Models: loading by name or path (`loading`), tiny offline builders (`tiny`), and the tiny models' pre-training
(`tiny_pretraining`), which the `tiny_*_base` configs run once and cache."""

from xmodal.trainers.models.loading import (
    load_for_inference,
    load_model,
    load_processor,
    materialise_init,
    model_location,
    set_image_pixels,
    to_model,
)

__all__ = ["load_for_inference", "load_model", "load_processor", "materialise_init", "model_location", "set_image_pixels",
           "to_model"]
