"""xmodal-imbalance: attention imbalance of a checkpoint per instance condition -> imbalance.json + heat maps.

`xmodal-imbalance [overrides]` composes `conf/imbalance.yaml` (the root config plus an `imbalance` node), so
the model, data, builder and encoding groups mean what they mean for `xmodal-train`, e.g.

    xmodal-imbalance model=tiny_qwen2_vl data=synthetic builder=conflict \\
        imbalance.checkpoint=outputs/run/final imbalance.compare=outputs/run2/final

Instances come from `imbalance.instances` (a JSONL of instances, docs/design.md) or else from data + builder;
they are grouped by their `condition` field and each group is measured separately.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.core.errors import ConfigError
from xmodal.data_builders.tokenize import EncodingSettings, encode_instance
from xmodal.recipes import CONFIG_DIR, base_model, instances_of
from xmodal.core.atomic import atomic_write_text
from xmodal.conf.schema import check_schema
from xmodal.core.console import hydra_console_script
from xmodal.trainers.metrics.imbalance import SpanStats
from xmodal.trainers.metrics.imbalance_probes import SPAN_PAIRS, collate_probe, probe_totals
from xmodal.trainers.metrics.plots import heatmap_grid
from xmodal.trainers.models import load_for_inference, to_model

logger = logging.getLogger("xmodal.imbalance")
PLOTTED = {"ratio": "ratio", "per_token_ratio": "per-token ratio"}


@dataclass
class ConditionResult:
    stats: SpanStats  # means over the valid sequences, [layers, heads] per quantity
    sequences: int
    span_names: tuple[str, str]


def read_instances(cfg: DictConfig) -> list[dict]:
    if cfg.imbalance.instances:
        with open(cfg.imbalance.instances) as f:
            return [json.loads(line) for line in f if line.strip()]
    return instances_of(cfg).instances


def encode_by_condition(instances: list[dict], processor, cfg: DictConfig) -> dict[str, list[tuple[dict, dict]]]:
    """`(instance, tokenized row)` pairs per condition, at most `imbalance.per_condition` each.

    Instances without both spans are skipped: no image for `image_text`, no two `meta.evidence` pieces
    for `evidence`.
    """
    settings = EncodingSettings(**cfg.encoding)
    grouped: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for instance in instances:
        condition = instance.get("condition", "default")
        if not _has_spans(instance, cfg.imbalance.spans) or len(grouped[condition]) >= cfg.imbalance.per_condition:
            continue
        row = encode_instance(instance, processor, settings)
        if row is not None:
            grouped[condition].append((instance, row))
    grouped = {condition: pairs for condition, pairs in sorted(grouped.items()) if pairs}
    if not grouped:
        raise ConfigError(f"imbalance: no instance to measure with spans={cfg.imbalance.spans!r}")
    return grouped


def _has_spans(instance: dict, spans: str) -> bool:
    if spans == "image_text":
        return bool(instance.get("images"))
    return len((instance.get("meta") or {}).get("evidence", [])) == 2


def measure_checkpoint(path: str, instances: list[dict], cfg: DictConfig) -> tuple[dict[str, ConditionResult], list[int]]:
    """Results per condition and the measured layer indices."""
    settings = cfg.imbalance
    model, processor = load_for_inference(path, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
    collator = MultimodalCollator(processor)
    results, layers = {}, None
    for condition, pairs in encode_by_condition(instances, processor, cfg).items():
        condition_instances, rows = [instance for instance, _ in pairs], [row for _, row in pairs]
        probe = collate_probe(
            rows, collator, model.config, processor, settings.batch_size, settings.query, settings.spans, condition_instances
        )
        sums, count, layers = probe_totals(
            model, probe, lambda batch: to_model(batch, model), layers=settings.layers, mode=settings.mode,
            progress=f"imbalance {condition}",
        )
        if count == 0:
            logger.warning("condition %s: no sequence where the query sees both spans; skipped", condition)
            continue
        results[condition] = ConditionResult(SpanStats.from_stacked(sums / count), int(count), probe[0][1].span_names)
    if not results:
        raise ValueError(f"{path}: no condition has a sequence whose queries see both spans")
    return results, layers


def condition_report(result: ConditionResult) -> dict:
    """JSON for one condition: means over layers and heads, per-layer means, full layer x head matrices."""
    named = result.stats.named(result.span_names)
    return {
        "sequences": result.sequences,
        "spans": {"a": result.span_names[0], "b": result.span_names[1]},
        "aggregate": {name: matrix.mean().item() for name, matrix in named.items()},
        "per_layer": {name: matrix.mean(-1).tolist() for name, matrix in named.items()},
        "layer_x_head": {name: matrix.tolist() for name, matrix in named.items()},
    }


def plot(results: dict[str, dict], checkpoints: dict[str, str], layers: list[int], mode: str, out_dir: str) -> list[str]:
    """One PNG per plotted quantity: a row per checkpoint, a panel per condition (titled with its spans)."""
    short = {label: _short_path(path) for label, path in checkpoints.items()}
    paths = []
    for quantity, title in PLOTTED.items():
        panels = [
            [
                (f"{condition}\n{result.span_names[0]} vs {result.span_names[1]}", result.stats.as_dict()[quantity])
                for condition, result in per_condition.items()
            ]
            for per_condition in results.values()
        ]
        figure = heatmap_grid(
            panels,
            quantity=quantity,
            layers=layers,
            label="share of the first span: a / (a + b)  (0.5 = balanced)",
            title=f"Attention imbalance, {title} ({mode} mode), per layer x head",
            row_labels=[f"{label}\n{short[label]}" for label in results],
        )
        path = os.path.join(out_dir, f"imbalance_{quantity}.png")
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths


def _short_path(path: str, limit: int = 26) -> str:
    """The last two path components (they tell `run_a/final` from `run_b/final`), cut to fit a plot label."""
    tail = os.path.join(*os.path.normpath(path).split(os.sep)[-2:])
    return tail if len(tail) <= limit else "..." + tail[-(limit - 3) :]


def run(cfg: DictConfig) -> str:
    """Measure `imbalance.checkpoint` (and `imbalance.compare`); returns the path of imbalance.json."""
    settings = cfg.imbalance
    if settings.spans not in SPAN_PAIRS:
        raise ConfigError(f"imbalance.spans must be one of {SPAN_PAIRS}, got {settings.spans!r}")
    torch.manual_seed(cfg.seed)
    checkpoint = settings.checkpoint or base_model(cfg)
    checkpoints = {"checkpoint": checkpoint, **({"compare": settings.compare} if settings.compare else {})}
    instances = read_instances(cfg)
    results, layers = {}, None
    for label, path in checkpoints.items():
        results[label], layers = measure_checkpoint(path, instances, cfg)
        for condition, result in results[label].items():
            logger.info(
                "%s %s: ratio %.4f (%s / (%s + %s)) over %d sequences",
                label, condition, result.stats.ratio.mean().item(), result.span_names[0], *result.span_names,
                result.sequences,
            )
    os.makedirs(settings.out_dir, exist_ok=True)
    report = {
        "checkpoints": checkpoints,
        "settings": OmegaConf.to_container(settings, resolve=True),
        "layers": layers,
        "results": {
            label: {condition: condition_report(result) for condition, result in per_condition.items()}
            for label, per_condition in results.items()
        },
    }
    json_path = os.path.join(settings.out_dir, "imbalance.json")
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    for path in plot(results, checkpoints, layers, settings.mode, settings.out_dir):
        logger.info("heat map: %s", path)
    logger.info("imbalance: %s", json_path)
    return json_path


# The console script: compose `conf/imbalance.yaml` with the command-line overrides, then `run` it.
main = hydra_console_script("xmodal-imbalance", run, CONFIG_DIR, "imbalance", check=check_schema)


if __name__ == "__main__":
    main()
