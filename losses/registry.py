"""Loss terms built from `conf/loss/*.yaml` by their `_target_`, weighted and summed by a `LossComposer`.

Adding a term takes one class and one YAML file (the class is named by import path, like every other
component: sources, builders, metrics and rewards are `_target_`-instantiated too):

    # my_project/losses.py (or a new file in losses/)
    from xmodal.losses import LossContext

    class EntropyLoss:
        needs_hidden_states = False          # optional; True makes the trainer request hidden states
        needs_full_logits = False            # optional; True: logits at every position in `ctx.logits`
                                             # (by default the head runs at target positions only)

        def __init__(self, temperature: float = 1.0):   # its options, given as YAML keys
            self.temperature = temperature

        def __call__(self, ctx: LossContext) -> torch.Tensor:   # UNWEIGHTED scalar
            ...

    # conf/loss/lm_entropy.yaml
    terms:
      lm: {_target_: xmodal.losses.lm.LMLoss, weight: 1.0}
      entropy: {_target_: my_project.losses.EntropyLoss, weight: 0.1, warmup_steps: 100, temperature: 2.0}

Each entry of `terms` takes `_target_` (the class), `weight` (default 1.0),
`warmup_steps` (the weight ramps linearly from 0 over that many optimizer steps; default 0), `name`
(the key logged to `metrics.jsonl`; default `<entry>_loss`) and the term's own options. An entry set to
null is dropped, so `loss.terms.align=null` on the command line removes a term.

A term returns its value normalised like the LM loss (see `LossContext.target_normalizer`), so that a
weight means the same thing at any gradient-accumulation split.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from xmodal.core.errors import NOT_IMPORTABLE_HINT, ConfigError
from xmodal.losses.base import LossContext

_ENTRY_KEYS = ("_target_", "weight", "warmup_steps", "name")


@dataclass
class WeightedTerm:
    """One configured term: the callable, the key it is logged under, and its (warmed-up) weight."""

    name: str
    term: Callable[[LossContext], torch.Tensor]
    weight: float = 1.0
    warmup_steps: int = 0

    def weight_at(self, global_step: int) -> float:
        if self.warmup_steps <= 0:
            return self.weight
        return self.weight * min(1.0, global_step / self.warmup_steps)


class LossComposer:
    """Sums `weight * term(ctx)` over the configured terms; built by `build_loss`."""

    def __init__(self, terms: list[WeightedTerm]):
        if not terms:
            raise ConfigError("a loss needs at least one term (see conf/loss/*.yaml)")
        self.terms = terms

    @property
    def needs_hidden_states(self) -> bool:
        """True when a term reads `outputs.hidden_states`: the trainer then passes `output_hidden_states=True`."""
        return any(getattr(entry.term, "needs_hidden_states", False) for entry in self.terms)

    @property
    def needs_full_logits(self) -> bool:
        """True when a term reads `ctx.logits` at every position; otherwise the head runs at the targets only."""
        return any(getattr(entry.term, "needs_full_logits", False) for entry in self.terms)

    def __call__(self, ctx: LossContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total to backpropagate, {name: detached float32 UNWEIGHTED value} to log)."""
        total = 0.0
        logged = {}
        for entry in self.terms:
            value = entry.term(ctx)
            logged[entry.name] = value.detach().float()
            total = total + entry.weight_at(ctx.global_step) * value
        return total, logged


def build_loss(loss_cfg: Mapping[str, Any]) -> LossComposer:
    """Build the composer from a loss config (`conf/loss/*.yaml`: a `terms` mapping; see the module doc)."""
    loss_cfg = _to_plain(loss_cfg)
    if not isinstance(loss_cfg, Mapping) or not isinstance(loss_cfg.get("terms"), Mapping):
        raise ConfigError(f"a loss config needs a `terms` mapping (entry -> {{_target_, weight, ...}}), got {loss_cfg!r}")
    terms = [_build_entry(key, entry) for key, entry in loss_cfg["terms"].items() if entry is not None]
    names = [entry.name for entry in terms]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"loss terms must log under distinct names; repeated: {', '.join(duplicated)}")
    return LossComposer(terms)


def _build_entry(key: str, entry: Mapping[str, Any]) -> WeightedTerm:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"loss term {key!r} must be a mapping with a `_target_`, got {entry!r}")
    cls = _resolve_class(key, entry)
    options = {k: v for k, v in entry.items() if k not in _ENTRY_KEYS}
    accepted = _accepted_options(cls)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ConfigError(
            f"loss term {key!r} ({cls.__qualname__}) got unknown option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(list(_ENTRY_KEYS[1:]) + accepted)}"
        )
    return WeightedTerm(
        name=entry.get("name") or f"{key}_loss",
        term=cls(**options),
        weight=float(entry.get("weight", 1.0)),
        warmup_steps=int(entry.get("warmup_steps", 0)),
    )


def _resolve_class(key: str, entry: Mapping[str, Any]) -> type:
    if "_target_" not in entry:
        raise ConfigError(f"loss term {key!r} needs a `_target_` (the import path of its class, e.g. xmodal.losses.lm.LMLoss)")
    module_name, _, class_name = str(entry["_target_"]).rpartition(".")
    try:  # importlib rather than hydra's get_class, which also logs the failure: the error below says it all
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(
            f"loss term {key!r}: cannot import `_target_` {entry['_target_']!r} ({error}): {NOT_IMPORTABLE_HINT}"
        ) from error


def _accepted_options(cls: type) -> list[str] | None:
    """Keyword options of `cls.__init__`, or None when it takes **kwargs (then the class validates)."""
    parameters = list(inspect.signature(cls).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _to_plain(node: Any) -> Any:
    # Hydra hands a DictConfig; the registry works on plain containers so options arrive as dicts/lists.
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
