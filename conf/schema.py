"""Typed schemas of the user-facing config values, checked once Hydra has composed a run's config.

A typo (`finetune.mode=qlora`, `model.dtype=bf16`) stops the command before anything runs, as one line naming the
key, the value and what is allowed: `xmodal-train: error: finetune.mode='qlora' is not allowed: expected one of
[full, lora]`. The schema lists only the keys with a closed set of values or a fixed type; everything else a group
holds (model.init, trainer.* TrainingArguments, ...) is checked by the component it configures.

The check is OmegaConf's own structured-config validation: the schema's values are merged into `RootSchema`, whose
Enum and typed fields refuse what they cannot hold. Every console script runs it on the composed config before its
task (`hydra_console_script(..., check=check_schema)`); code that composes with `hydra.compose` calls it itself.
(The schema is not a Hydra defaults-list schema: those are closed, and the groups hold open nodes such as
`model.init`; nor a Hydra callback: Hydra turns a callback's exception into a warning and runs the job.)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from xmodal.core.errors import ConfigError

Dtype = Enum("Dtype", {name: name for name in ("float32", "bfloat16", "float16")})
# auto: flash_attention_2 on a GPU where flash-attn is installed, else sdpa (xmodal.trainers.models.loading)
Attention = Enum(
    "Attention", {name: name for name in ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")}
)
FinetuneMode = Enum("FinetuneMode", {name: name for name in ("full", "lora")})
NonFiniteLoss = Enum("NonFiniteLoss", {name: name for name in ("raise", "skip")})
Overlong = Enum("Overlong", {name: name for name in ("drop", "error")})
ZeroStage = Enum("ZeroStage", {f"stage_{stage}": stage for stage in (0, 1, 2, 3)})
SamplingStrategy = Enum("SamplingStrategy", {name: name for name in ("random", "sequential", "group_by_length", "batch_rebalance")})


@dataclass
class ModelSchema:
    dtype: Dtype = Dtype.float32
    attn_implementation: Attention = Attention.sdpa
    trust_remote_code: bool = False


@dataclass
class FinetuneSchema:
    mode: FinetuneMode = FinetuneMode.full
    freeze_vision_tower: bool = True
    freeze_projector: bool = False
    freeze_language_model: bool = False


@dataclass
class ZeroSchema:
    stage: ZeroStage = ZeroStage.stage_0


@dataclass
class DeepSpeedSchema:
    zero_optimization: ZeroSchema = field(default_factory=ZeroSchema)


@dataclass
class EncodingSchema:
    max_length: int = 512
    overlong: Overlong = Overlong.drop


@dataclass
class TrainerSchema:
    max_steps: int = -1
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    train_sampling_strategy: SamplingStrategy = SamplingStrategy.random


@dataclass
class RootSchema:
    model: ModelSchema = field(default_factory=ModelSchema)
    finetune: FinetuneSchema = field(default_factory=FinetuneSchema)
    deepspeed: DeepSpeedSchema = field(default_factory=DeepSpeedSchema)
    encoding: EncodingSchema = field(default_factory=EncodingSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    seed: int = 42
    on_nonfinite_loss: NonFiniteLoss = NonFiniteLoss["raise"]
    max_skipped_steps: int = 5
    overwrite: bool = False
    packing: bool = False
    resume: Any = False  # false | true | auto | a checkpoint directory: checked below (a path is no Enum)


def _schema_values(schema: type, node: DictConfig) -> dict:
    """The values of `node` (the composed config or one of its groups) that `schema` declares, nested alike."""
    values = {}
    for schema_field in dataclasses.fields(schema):
        if schema_field.name not in node:
            continue
        value = node[schema_field.name]
        nested = schema_field.default_factory
        if nested is not dataclasses.MISSING and dataclasses.is_dataclass(nested) and isinstance(value, DictConfig):
            value = _schema_values(nested, value)
        values[schema_field.name] = value
    return values


def check_schema(cfg: DictConfig) -> None:
    """ConfigError, one line, for the first value of `cfg` that the schema refuses."""
    try:
        OmegaConf.merge(OmegaConf.structured(RootSchema), _schema_values(RootSchema, cfg))
    except ValidationError as error:
        value = OmegaConf.select(cfg, error.full_key)
        allowed = _allowed(error.full_key)
        raise ConfigError(f"{error.full_key}={value!r} is not allowed: expected {allowed}") from None
    resume = cfg.get("resume", False)
    if not isinstance(resume, bool) and resume != "auto" and not (isinstance(resume, str) and os.path.isdir(resume)):
        raise ConfigError(
            f"resume={resume!r} is not a checkpoint directory: expected true, false, auto or a checkpoint directory"
        )


def _allowed(full_key: str) -> str:
    """What the schema field at `full_key` accepts, in words."""
    schema = RootSchema
    *parents, name = full_key.split(".")
    for parent in parents:
        schema = next(f for f in dataclasses.fields(schema) if f.name == parent).default_factory
    kind = next(f for f in dataclasses.fields(schema) if f.name == name).type
    kind = globals().get(kind, kind) if isinstance(kind, str) else kind
    if isinstance(kind, type) and issubclass(kind, Enum):
        return "one of [" + ", ".join(str(member.value) for member in kind) + "]"
    return f"a value of type {kind.__name__ if isinstance(kind, type) else kind}"
