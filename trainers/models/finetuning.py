"""Choose what trains: full or LoRA fine-tuning, with the vision tower, projector and LM frozen independently."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from peft import LoraConfig, get_peft_model

logger = logging.getLogger(__name__)

# Parameter-name prefixes of each component, per architecture (`config.model_type`).
_COMPONENTS = {
    "llava": {
        "vision_tower": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "language_model": ("model.language_model.", "lm_head."),
    },
    "qwen2_vl": {
        "vision_tower": ("model.visual.blocks.", "model.visual.patch_embed."),
        "projector": ("model.visual.merger.",),
        "language_model": ("model.language_model.", "lm_head."),
    },
}
_COMPONENTS["qwen2_5_vl"] = _COMPONENTS["qwen2_vl"]
# Submodule names that PEFT's `modules_to_save` keeps fully trainable beside the adapters.
_MODULE_NAMES = {
    "llava": {"vision_tower": "vision_tower", "projector": "multi_modal_projector"},
    "qwen2_vl": {"vision_tower": "visual", "projector": "merger"},
}
_MODULE_NAMES["qwen2_5_vl"] = _MODULE_NAMES["qwen2_vl"]
# The submodule (a transformers model of its own) that each checkpointable component names, per architecture.
CHECKPOINTED_MODULES = {
    "vision_tower": {"llava": "model.vision_tower", "qwen2_vl": "model.visual", "qwen2_5_vl": "model.visual"},
    "language_model": {"llava": "model.language_model", "qwen2_vl": "model.language_model", "qwen2_5_vl": "model.language_model"},
}
# LoRA on the language model's linear layers only: the vision towers use the same projection names.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = DEFAULT_LORA_TARGETS


@dataclass
class FinetuneSettings:
    mode: str = "full"  # full | lora
    freeze_vision_tower: bool = True
    freeze_projector: bool = False
    freeze_language_model: bool = False  # in LoRA mode the base LM is frozen anyway; adapters train
    lora: LoraSettings = field(default_factory=LoraSettings)
    # Components whose activations are recomputed in backward instead of stored: vision_tower, language_model.
    activation_checkpointing: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.mode not in ("full", "lora"):
            raise ValueError(f"finetune.mode must be 'full' or 'lora', got {self.mode!r}")
        unknown = sorted(set(self.activation_checkpointing) - set(CHECKPOINTED_MODULES))
        if unknown:
            raise ValueError(
                f"finetune.activation_checkpointing: unknown component(s) {unknown}; choose from {list(CHECKPOINTED_MODULES)}"
            )
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)


def component_prefixes(model) -> dict[str, tuple[str, ...]]:
    model_type = model.config.model_type
    if model_type not in _COMPONENTS:
        raise ValueError(f"no component map for model_type {model_type!r}; known: {sorted(_COMPONENTS)}")
    return _COMPONENTS[model_type]


def apply_finetuning(model, settings: FinetuneSettings):
    """Freeze the chosen components, checkpoint the chosen ones' activations and, in LoRA mode, wrap the model
    with PEFT adapters."""
    prefixes = component_prefixes(model)
    for component in settings.activation_checkpointing:
        # Non-reentrant: recomputation works whether or not the component's inputs require grad (frozen parts).
        module = model.get_submodule(CHECKPOINTED_MODULES[component][model.config.model_type])
        module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    frozen = {
        "vision_tower": settings.freeze_vision_tower,
        "projector": settings.freeze_projector,
        "language_model": settings.freeze_language_model or settings.mode == "lora",
    }
    if settings.mode == "lora":
        names = _MODULE_NAMES[model.config.model_type]
        keep_trainable = [names[part] for part in ("vision_tower", "projector") if not frozen[part]]
        config = LoraConfig(
            r=settings.lora.r,
            lora_alpha=settings.lora.alpha,
            lora_dropout=settings.lora.dropout,
            target_modules=settings.lora.target_modules,
            modules_to_save=keep_trainable or None,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
        # PEFT leaves only adapters and `modules_to_save` trainable, which is exactly the frozen map above.
    else:
        for name, parameter in model.named_parameters():
            for part, part_prefixes in prefixes.items():
                if name.startswith(part_prefixes):
                    parameter.requires_grad_(not frozen[part])
    # ZeRO-3 partitions parameters at construction; `ds_numel` keeps their full size.
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    if trainable == 0:
        raise ValueError("every parameter is frozen: unfreeze a component or use finetune=lora")
    logger.info("trainable parameters: %d / %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    return model
