"""Choose what trains: full or LoRA fine-tuning, with the vision tower, projector and LM frozen independently.

The three components are found in the model itself, not listed per family: the vision tower is the outermost
submodule that is a transformers model of the config's `vision_config`, the language model is `get_decoder()`
(with the output head), and the projector is every other parameter of the multimodal model (LLaVA's
`multi_modal_projector`, Idefics3's `connector`, LLaVA-NeXT's `image_newline`, ...). `PROJECTOR_INSIDE_TOWER`
is the one exceptions table: families whose projector is a submodule of the vision tower.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from xmodal.core.errors import ConfigError

logger = logging.getLogger(__name__)

COMPONENTS = ("vision_tower", "projector", "language_model")
# Vision-tower children that project into the LM (the Qwen-VL patch mergers), by `config.model_type`.
PROJECTOR_INSIDE_TOWER = {
    "qwen2_vl": ("merger",),
    "qwen2_5_vl": ("merger",),
    "qwen3_vl": ("merger", "deepstack_merger_list"),
}
# Components whose activations can be recomputed in backward: each is a transformers model of its own.
CHECKPOINTABLE = ("vision_tower", "language_model")
# `finetune.lora.target_modules` default: every linear layer of the language model, wherever the family keeps it.
LANGUAGE_MODEL_LINEAR = "language_model_linear"


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = LANGUAGE_MODEL_LINEAR  # or PEFT's own: a regex or a list of module names


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
        unknown = sorted(set(self.activation_checkpointing) - set(CHECKPOINTABLE))
        if unknown:
            raise ValueError(
                f"finetune.activation_checkpointing: unknown component(s) {unknown}; choose from {list(CHECKPOINTABLE)}"
            )
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)


@dataclass(frozen=True)
class ModelParts:
    """Where a model keeps its components: module paths (`get_submodule` names) and parameter-name prefixes."""

    vision_tower: str  # the vision tower module (the projector's children inside it excluded from its prefixes)
    language_model: str  # the decoder module; its prefixes add the output head
    prefixes: dict[str, tuple[str, ...]]  # component -> parameter-name prefixes
    projector_modules: tuple[str, ...]  # the projector's module paths (PEFT's `modules_to_save` for it)

    def component_of(self, parameter_name: str) -> str:
        """The component of a parameter, named as in the model or in its PEFT wrapper."""
        name = unwrapped_name(parameter_name)
        for component, prefixes in self.prefixes.items():
            if name.startswith(prefixes):
                return component
        raise ValueError(f"parameter {parameter_name} belongs to no component")


def unwrapped_name(name: str) -> str:
    """A module or parameter name without PEFT's wrapping (`base_model.model.`, a `modules_to_save` copy or the
    original it shadows): the name it has in the bare model."""
    name = name.removeprefix("base_model.model.")
    return re.sub(r"\.(modules_to_save\.[^.]+|original_module)(?=\.|$)", "", name)


def model_parts(model) -> ModelParts:
    """Locate the vision tower, projector and language model of a transformers image-text model (bare, or wrapped
    by PEFT: the names are then the bare model's)."""
    peft_model = model
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = model.config.model_type
    paths = {id(module): unwrapped_name(name) for name, module in model.named_modules()}
    vision_config = getattr(model.config, "vision_config", None)
    tower = next(
        (
            module
            for name, module in model.named_modules()
            if name and isinstance(module, PreTrainedModel) and vision_config is not None
            and type(module.config) is type(vision_config)
        ),
        None,
    )
    tower_name = paths[id(tower)] if tower is not None else None
    try:
        decoder = model.get_decoder()
    except (AttributeError, ValueError):
        decoder = None
    lm_name = paths.get(id(decoder)) if decoder is not None else None
    if not tower_name or not lm_name:
        raise ConfigError(
            f"model: cannot find the {'vision tower' if not tower_name else 'language model'} of {type(model).__name__} "
            "(no submodule of its vision_config / get_decoder() found); add it to xmodal.trainers.models.finetuning"
        )
    inside = PROJECTOR_INSIDE_TOWER.get(model_type, ())
    projector_inside = tuple(f"{tower_name}.{child}" for child in inside if hasattr(tower, child))
    tower_prefixes = tuple(
        f"{tower_name}.{child}." for child, _ in tower.named_children() if f"{tower_name}.{child}" not in projector_inside
    ) + tuple(f"{tower_name}.{name}" for name, _ in tower.named_parameters(recurse=False))
    head = paths.get(id(model.get_output_embeddings()))
    lm_prefixes = (f"{lm_name}.",) + ((f"{head}.",) if head else ())
    # The projector: what the multimodal model holds beside tower and LM (modules and bare parameters such as
    # LLaVA-NeXT's image_newline), found one level below their common parent.
    parent_name = lm_name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    dot = f"{parent_name}." if parent_name else ""
    taken = {tower_name, lm_name, head}
    projector_modules = projector_inside + tuple(
        f"{dot}{child}" for child, module in parent.named_children()
        if f"{dot}{child}" not in taken and any(True for _ in module.parameters())
    )
    projector_parameters = tuple(f"{dot}{name}" for name, _ in parent.named_parameters(recurse=False))
    prefixes = {
        "vision_tower": tower_prefixes,
        "projector": tuple(f"{name}." for name in projector_modules) + projector_parameters,
        "language_model": lm_prefixes,
    }
    parts = ModelParts(tower_name, lm_name, prefixes, projector_modules)
    every_prefix = sum(prefixes.values(), ())
    strays = [name for name, _ in peft_model.named_parameters() if not unwrapped_name(name).startswith(every_prefix)]
    if strays or not prefixes["projector"]:
        raise ConfigError(
            f"model: the components of {type(model).__name__} are unusual (parameters outside vision tower, projector "
            f"and language model: {strays[:3]}); add it to xmodal.trainers.models.finetuning"
        )
    return parts


def component_prefixes(model) -> dict[str, tuple[str, ...]]:
    return model_parts(model).prefixes


def lora_targets(model, parts: ModelParts) -> list[str]:
    """Every linear layer of the language model (the vision towers use the same projection names)."""
    decoder = model.get_submodule(parts.language_model)
    return [f"{parts.language_model}.{name}" for name, module in decoder.named_modules() if isinstance(module, nn.Linear)]


def _wrappable(model, names: tuple[str, ...]) -> list[str]:
    """Module paths PEFT's `modules_to_save` can copy: a ModuleList (Qwen3-VL's DeepStack mergers) by its items."""
    wrappable = []
    for name in names:
        module = model.get_submodule(name)
        container = isinstance(module, (nn.ModuleList, nn.ModuleDict))
        wrappable += [f"{name}.{child}" for child, _ in module.named_children()] if container else [name]
    return wrappable


def apply_finetuning(model, settings: FinetuneSettings):
    """Freeze the chosen components, checkpoint the chosen ones' activations and, in LoRA mode, wrap the model
    with PEFT adapters."""
    parts = model_parts(model)
    for component in settings.activation_checkpointing:
        # Non-reentrant: recomputation works whether or not the component's inputs require grad (frozen parts).
        module = model.get_submodule(getattr(parts, component))
        module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    frozen = {
        "vision_tower": settings.freeze_vision_tower,
        "projector": settings.freeze_projector,
        "language_model": settings.freeze_language_model or settings.mode == "lora",
    }
    if settings.mode == "lora":
        keep_trainable = ([parts.vision_tower] if not frozen["vision_tower"] else []) + (
            _wrappable(model, parts.projector_modules) if not frozen["projector"] else []
        )
        targets = settings.lora.target_modules
        config = LoraConfig(
            r=settings.lora.r,
            lora_alpha=settings.lora.alpha,
            lora_dropout=settings.lora.dropout,
            target_modules=lora_targets(model, parts) if targets == LANGUAGE_MODEL_LINEAR else targets,
            modules_to_save=keep_trainable or None,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
        # PEFT leaves only adapters and `modules_to_save` trainable, which is exactly the frozen map above.
    else:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not frozen[parts.component_of(name)])
    # ZeRO-3 partitions parameters at construction; `ds_numel` keeps their full size.
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    if trainable == 0:
        raise ValueError("every parameter is frozen: unfreeze a component or use finetune=lora")
    logger.info("trainable parameters: %d / %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    return model
