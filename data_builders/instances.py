"""Source + builder -> checked instances: the one way every entry point (train, data, eval, imbalance) builds data."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from xmodal.core.errors import ConfigError
from .records import ArrowRecords
from .sample import check_sample


@dataclass
class BuiltInstances:
    source: object  # the instantiated `data` source (its `skipped` counts go into build summaries)
    builder: object  # the instantiated `builder` (`ordered`, `dropped`, and builder-specific attributes)
    instances: list[dict] | ArrowRecords | object  # or a datasets.IterableDataset when the source streams


def examples_per_step(cfg: DictConfig) -> int:
    """Instances per optimizer step of the configured training run (what a step-based schedule counts in).

    The world size comes from the launcher's `WORLD_SIZE`, which torchrun and the DeepSpeed launcher set
    before the recipe starts; a single process is 1.
    """
    batch = OmegaConf.select(cfg, "trainer.per_device_train_batch_size", default=1)
    accumulation = OmegaConf.select(cfg, "trainer.gradient_accumulation_steps", default=1)
    return int(batch) * int(accumulation) * int(os.environ.get("WORLD_SIZE", 1))


def build_instances(cfg: DictConfig) -> BuiltInstances:
    """Instantiate `cfg.data` and `cfg.builder`, build with the run's seed and step size, and check every instance."""
    source = instantiate(cfg.data)
    builder = instantiate(cfg.builder)
    if getattr(source, "streaming", False) and not getattr(builder, "streams", False):
        raise ConfigError(
            f"data.streaming=true: builder {cfg.builder._target_} needs the whole corpus (mixing, pairing, "
            "curricula); use builder=single or data.streaming=false"
        )
    instances = builder.build(source, seed=cfg.seed, examples_per_step=examples_per_step(cfg))
    if getattr(source, "streaming", False):
        return BuiltInstances(source, builder, instances)  # checked as it is read
    if not len(instances):
        raise ConfigError(f"builder {cfg.builder._target_} produced no instances from data {cfg.data._target_}")
    if not isinstance(instances, ArrowRecords):  # prepared records were checked when the source prepared them
        for instance in instances:
            check_sample(instance)
    return BuiltInstances(source, builder, instances)
