"""Training metric: attention imbalance on a fixed probe set, every N optimizer steps.

Wiring (the recipe): build the callback from `conf/metrics/imbalance.yaml`, construct the `Trainer` with it
in `callbacks=[...]`, then call `callback.bind(trainer)`; that collates the probe once from the trainer's
own dataset and collator (or from `probe_rows`, e.g. a held-out conflict set).

Under DeepSpeed every rank runs its share of the probe forwards (ZeRO-3 gathers weights collectively in
every forward, so all ranks must run the same number of them) and the statistics are all-reduced, so
every rank logs the same values.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from xmodal.trainers.metrics.base import MetricCallback
from xmodal.trainers.metrics.imbalance import MODES, SpanStats
from xmodal.trainers.metrics.imbalance_probes import QUERY_SETS, SPAN_PAIRS, ProbeMasks, collate_probe, probe_totals
from xmodal.trainers.metrics.plots import figure_to_rgb, heatmap_grid

LOG_PREFIX = "imbalance"


class ImbalanceCallback(MetricCallback):
    """Logs `imbalance/ratio`, per-layer `imbalance/ratio/layer_{i}` and the per-token variants.

    `layers`: language-model layer indices to probe (None = all). `query`: `last_prompt` or `answer`.
    `spans`: `image_text` or `evidence` (trainers/metrics/imbalance_probes.py; evidence needs `probe_instances`).
    `mode`: `weight` (attention mass) or `norm` (output-norm flow). `probe_size` rows are collated
    `probe_batch_size` at a time.
    """

    scope = "imbalance"

    def __init__(
        self,
        every_n_steps: int = 100,
        probe_size: int = 16,
        probe_batch_size: int = 8,
        layers: list[int] | None = None,
        query: str = "last_prompt",
        spans: str = "image_text",
        mode: str = "weight",
        heatmap: bool = True,
    ):
        super().__init__(every_n_steps)
        if probe_size < 1 or probe_batch_size < 1:
            raise ValueError("metrics.imbalance: probe_size and probe_batch_size must be positive")
        # Checked here so that a config typo fails at start-up, not at the first probe.
        for name, value, allowed in (("query", query, QUERY_SETS), ("spans", spans, SPAN_PAIRS), ("mode", mode, MODES)):
            if value not in allowed:
                raise ValueError(f"metrics.imbalance.{name} must be one of {allowed}, got {value!r}")
        self.probe_size = probe_size
        self.probe_batch_size = probe_batch_size
        self.layers = sorted(set(layers)) if layers is not None else None  # measure() reports them sorted
        self.query = query
        self.spans = spans
        self.mode = mode
        self.heatmap = heatmap
        self.probe: list[tuple[dict, ProbeMasks]] = []

    def bind(
        self, trainer, probe_rows: list[dict] | None = None, probe_instances: list[dict] | None = None, collator=None
    ) -> None:
        """Attach to `trainer` and collate the probe once.

        The probe is `probe_rows` (tokenized rows, e.g. of a held-out conflict set; `spans: evidence` also
        needs their `probe_instances`), else the first `probe_size` training rows that hold an image.
        `collator` defaults to the trainer's (xmodal-rl's trainer collates prompts: it passes the SFT collator).
        """
        rows = probe_rows if probe_rows is not None else _rows_with_images(trainer.train_dataset, self.probe_size)
        if not rows:
            raise ValueError("the imbalance probe is empty: no tokenized row with an image was found")
        super().bind(trainer)
        self.probe = collate_probe(
            rows, collator or trainer.data_collator, trainer.model.config, trainer.processing_class,
            self.probe_batch_size, self.query, self.spans, probe_instances,
        )

    def on_due_step(self, args, state, control, model) -> None:
        mean, count = self.measure_probe(model)
        if count == 0:
            return
        self.log(control, self.scalars(mean, count))
        if self.heatmap and state.is_world_process_zero:
            self._log_heatmap(args, state, mean)

    def measure_probe(self, model) -> tuple[SpanStats, int]:
        """Mean statistics over the valid probe sequences of all ranks, and how many there were."""
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        sums, count, _ = probe_totals(
            model, self.probe, self.prepare_inputs, layers=self.layers, mode=self.mode, rank=rank, world=world
        )
        device = self.trainer.args.device
        sums, count = sums.to(device), count.to(device)
        if world > 1:
            # One reduction of [quantities, L, H] sums with the count appended.
            packed = torch.cat([sums.flatten(), count.reshape(1)])
            dist.all_reduce(packed)
            sums, count = packed[:-1].reshape(sums.shape), packed[-1]
        return SpanStats.from_stacked(sums / count.clamp(min=1)), int(count.item())

    def scalars(self, mean: SpanStats, count: int) -> dict[str, float]:
        """Means over probed layers and heads, plus per-layer values (means over heads)."""
        logs = {f"{LOG_PREFIX}/sequences": count}
        for name, matrix in mean.named(self._span_names()).items():
            logs[f"{LOG_PREFIX}/{name}"] = matrix.mean().item()
            for layer, value in zip(self._probed_layers(matrix), matrix.mean(-1).tolist()):
                logs[f"{LOG_PREFIX}/{name}/layer_{layer}"] = value
        return logs

    def _span_names(self) -> tuple[str, str]:
        return self.probe[0][1].span_names

    def _probed_layers(self, matrix: torch.Tensor) -> list[int]:
        return self.layers if self.layers is not None else list(range(matrix.shape[0]))

    def _log_heatmap(self, args, state, mean: SpanStats) -> None:
        report_to = args.report_to or []
        writers = [c.tb_writer for c in self.trainer.callback_handler.callbacks if getattr(c, "tb_writer", None)]
        if "wandb" not in report_to and not writers:
            return
        name_a, name_b = self._span_names()
        figure = heatmap_grid(
            [[("ratio", mean.ratio), ("per-token ratio", mean.per_token_ratio)]],
            quantity="ratio",
            layers=self._probed_layers(mean.ratio),
            label=f"{name_a} / ({name_a} + {name_b})  (0.5 = balanced)",
            title=f"Attention imbalance ({self.mode}), step {state.global_step}",
        )
        pixels = figure_to_rgb(figure)
        for writer in writers:
            writer.add_image(f"{LOG_PREFIX}/heatmap", pixels, state.global_step, dataformats="HWC")
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({f"{LOG_PREFIX}/heatmap": wandb.Image(pixels)}, commit=False)


def _rows_with_images(dataset, count: int) -> list[dict]:
    rows = []
    for row in dataset:
        if row.get("images"):
            rows.append(row)
            if len(rows) == count:
                break
    return rows
