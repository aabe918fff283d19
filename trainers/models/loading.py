"""Load a VLM and its processor by name or path; tiny configs are first materialised into a cached local checkpoint."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os

import torch
from huggingface_hub import constants as hub_constants
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from xmodal.core.atomic import atomic_directory, published_directory
from xmodal.core.errors import ConfigError
from xmodal.core import distributed
from xmodal.trainers.models.tiny import IMAGE_ONLY_PROCESSORS, SUB_PROCESSORS, upstream_class

logger = logging.getLogger(__name__)


def materialise_init(init_cfg: DictConfig, cache_dir: str, seed: int) -> str:
    """Build a model from its `init` config once (seeded) and save it with its processor; return the directory.

    Loading every model with `from_pretrained`, tiny ones included, keeps one code path for ZeRO-3
    partitioned loading, LoRA merges and reloads, whichever model a run uses.
    """
    spec = json.dumps({"init": OmegaConf.to_container(init_cfg, resolve=True), "seed": seed}, sort_keys=True)
    path = os.path.join(cache_dir, "models", f"{init_cfg._target_.rsplit('.', 1)[-1]}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}")
    if os.path.isdir(path):
        return path
    torch.manual_seed(seed)
    model, processor = instantiate(init_cfg, _convert_="all")
    with atomic_directory(path) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    logger.info("built %s from config into %s", type(model).__name__, path)
    return path


def model_location(model_cfg: DictConfig, cache_dir: str, seed: int) -> str:
    """The checkpoint a run loads: `model.path`, or the tiny `model.init` materialised once into `cache_dir`,
    seeded with `model.init_seed` where the config sets one (one base model for every run seed, as a released
    base model is), else with the run's `seed`.

    Runs before the TrainingArguments exist: once they register a ZeRO-3 config, building a model enters
    the collective `zero.Init`, which a model built on rank 0 alone cannot join.
    """
    if model_cfg.path:
        return published_directory(model_cfg.path)  # e.g. another run's final/, even mid-publish
    if not model_cfg.init:
        raise ConfigError("model: set model.path (a hub name or directory) or model.init (a builder config)")
    with distributed.main_process_first():
        init_seed = OmegaConf.select(model_cfg, "init_seed", default=None)
        return materialise_init(model_cfg.init, cache_dir, seed if init_seed is None else init_seed)


def load_processor(path: str, trust_remote_code: bool = False):
    """`AutoProcessor`, or the image-only Qwen-VL processor where torchvision is missing (see `tiny._WithoutVideo`).

    Code shipped with a checkpoint runs only with `trust_remote_code` (`model.trust_remote_code=true`).
    """
    check_checkpoint_path(path)
    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ImportError, AttributeError, OSError, TypeError, ValueError) as error:
        config = json.loads(_read_text(path, "processor_config.json") or "{}")
        if config.get("processor_class") not in IMAGE_ONLY_PROCESSORS:
            refusal = unloadable(path, error)
            if refusal is None:
                raise
            raise refusal from error
        logger.info("AutoProcessor failed (%s); using the image-only %s", error, config["processor_class"])
        image_only = IMAGE_ONLY_PROCESSORS[config["processor_class"]]
        # The processor's own settings saved beside its sub-processors (e.g. InternVL's image_seq_length).
        settings = inspect.signature(upstream_class(image_only).__init__).parameters
        return image_only(
            image_processor=AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code),
            tokenizer=AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code),
            chat_template=_read_text(path, "chat_template.jinja"),
            **{key: value for key, value in config.items() if key in settings and key not in SUB_PROCESSORS},
        )


def _read_text(path: str, name: str) -> str | None:
    local = os.path.join(path, name)
    if os.path.isfile(local):
        with open(local) as f:
            return f.read()
    return None


def set_image_pixels(processor, min_pixels: int | None = None, max_pixels: int | None = None):
    """Cap the resolution of a dynamic-resolution (Qwen2-VL family) processor: each image is resized so that its
    pixel count lies in [min_pixels, max_pixels], which bounds its number of image tokens (pixels / 28**2)."""
    if min_pixels is None and max_pixels is None:
        return processor
    image_processor = processor.image_processor
    if getattr(image_processor, "merge_size", None) is None:
        raise ConfigError(
            f"model.min_pixels / model.max_pixels: {type(image_processor).__name__} resizes every image to a fixed "
            "size; pixel caps apply to dynamic-resolution processors (Qwen2-VL, Qwen2.5-VL)"
        )
    size = image_processor.size
    image_processor.size = {
        "shortest_edge": min_pixels if min_pixels is not None else size["shortest_edge"],
        "longest_edge": max_pixels if max_pixels is not None else size["longest_edge"],
    }
    return processor


def attention_implementation(name: str) -> str:
    """`auto`: flash_attention_2 on a GPU where flash-attn is installed, else sdpa; any other name as given."""
    if name != "auto":
        return name
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if torch.cuda.is_available() and is_flash_attn_2_available() else "sdpa"


def load_model(path: str, dtype: str, attn_implementation: str, trust_remote_code: bool = False):
    check_checkpoint_path(path)
    try:
        return AutoModelForImageTextToText.from_pretrained(
            path, dtype=getattr(torch, dtype), attn_implementation=attention_implementation(attn_implementation),
            trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        refusal = unloadable(path, error)
        if refusal is None:
            raise
        raise refusal from error


def load_for_inference(path: str, dtype: str, attn_implementation: str, trust_remote_code: bool = False):
    """(model in eval mode on the GPU when there is one, its processor) for measuring and evaluating."""
    path = published_directory(path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(path, dtype, attn_implementation, trust_remote_code).to(device).eval()
    return model, load_processor(path, trust_remote_code)


def check_checkpoint_path(path: str) -> None:
    """Refuse a local path that is not a checkpoint before the hub is asked about it (a hub name is `org/name`)."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"model: {path} has no config.json: not a checkpoint directory (save_pretrained writes one)")
    elif path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ConfigError(f"model: {path} does not exist")


def unloadable(path: str, error: Exception) -> ConfigError | None:
    """The user error for a checkpoint that cannot be read (code it ships that may not run, a broken local
    directory, a hub name with no way to fetch it), or None for an error of another kind."""
    if "trust_remote_code" in str(error):
        return ConfigError(
            f"model: {path} ships its own code (auto_map in its config); it runs only with model.trust_remote_code=true, "
            "which you should set only if you trust that code"
        )
    if not isinstance(error, OSError):
        return None
    if os.path.isdir(path):
        return ConfigError(f"model: {path} is not a loadable checkpoint: {error}")
    offline = hub_constants.HF_HUB_OFFLINE or "couldn't connect" in str(error)
    why = "the Hugging Face hub cannot be reached (offline)" if offline else f"it cannot be fetched ({error})"
    return ConfigError(
        f"model: {path!r} is not a local directory and {why}, and no cached copy exists. Download it where there is "
        f"network (`hf download {path} --local-dir DIR`) and point at DIR (model.path=DIR, or the checkpoint you passed)"
    )


def to_model(inputs: dict, model) -> dict:
    """Batch tensors on the model's device; pixel values in the model's dtype (a bf16 model takes bf16 images)."""
    device = next(model.parameters()).device
    return {
        key: value.to(device, dtype=model.dtype) if value.is_floating_point() else value.to(device)
        for key, value in inputs.items()
    }
