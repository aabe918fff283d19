"""Source + builder -> checked instances: the one way every entry point (train, data, eval, imbalance) builds data."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import DictConfig

from xmodal.core.errors import ConfigError
from .records import ArrowRecords
from .sample import check_sample


@dataclass
class BuiltInstances:
    source: object  # the instantiated `data` source (its `skipped` counts go into build summaries)
    builder: object  # the instantiated `builder` (`ordered`, `dropped`, and builder-specific attributes)
    instances: list[dict] | ArrowRecords | object  # or a datasets.IterableDataset when the source streams


def build_instances(data_cfg: DictConfig, builder_cfg: DictConfig, *, seed: int, examples_per_step: int = 1) -> BuiltInstances:
    """Instantiate the `data` source and the `builder`, build with `seed` and `examples_per_step` (instances per
    optimizer step of the run the instances are for: a step-based schedule counts in it), check every instance."""
    source = instantiate(data_cfg)
    builder = instantiate(builder_cfg)
    if getattr(source, "streaming", False) and not getattr(builder, "streams", False):
        raise ConfigError(
            f"data.streaming=true: builder {builder_cfg._target_} needs the whole corpus (mixing, pairing, "
            "curricula); use builder=single or data.streaming=false"
        )
    instances = builder.build(source, seed=seed, examples_per_step=examples_per_step)
    if getattr(source, "streaming", False):
        return BuiltInstances(source, builder, instances)  # checked as it is read
    if not len(instances):
        raise ConfigError(f"builder {builder_cfg._target_} produced no instances from data {data_cfg._target_}")
    if not isinstance(instances, ArrowRecords):  # prepared records were checked when the source prepared them
        for instance in instances:
            check_sample(instance)
    return BuiltInstances(source, builder, instances)
