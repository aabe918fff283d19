"""Layer x head heat maps of attention-imbalance statistics (matplotlib objects only, no pyplot state)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Ratios live in [0, 1] with 0.5 = balanced: a diverging map centred there shows which span dominates.
_RATIO_QUANTITIES = ("ratio", "per_token_ratio")
_ANNOTATE_UP_TO = 12  # cells per side below which each cell also shows its value


def heatmap_grid(
    panels: list[list[tuple[str, torch.Tensor]]],
    quantity: str,
    layers: list[int],
    label: str,
    title: str,
    row_labels: list[str] | None = None,
) -> Figure:
    """A figure with one row per entry of `panels` and one `(panel title, [layers, heads] matrix)` per column.

    All panels share one colour scale (so before/after and conditions compare by colour) and one colorbar
    labelled `label`; `row_labels` (e.g. checkpoint names) head each row's first y axis.
    """
    rows, columns = len(panels), max(len(row) for row in panels)
    figure = Figure(figsize=(1.2 + 3.4 * columns, 0.9 + 2.8 * rows), layout="constrained")
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    matrices = [matrix.float().cpu().numpy() for row in panels for _, matrix in row]
    if quantity in _RATIO_QUANTITIES:
        scale = {"cmap": "RdBu_r", "vmin": 0.0, "vmax": 1.0}
    else:
        scale = {"cmap": "viridis", "vmin": float(np.nanmin(matrices)), "vmax": float(np.nanmax(matrices))}
    image = None
    for row_index, (row_axes, row) in enumerate(zip(axes, panels)):
        for axis, (panel_title, matrix) in zip(row_axes, row):
            values = matrix.float().cpu().numpy()
            image = axis.imshow(values, aspect="auto", interpolation="nearest", **scale)
            axis.set_title(panel_title, fontsize=10)
            axis.set_xlabel("head")
            axis.set_ylabel("layer")
            axis.set_xticks(range(values.shape[1]))
            axis.set_yticks(range(values.shape[0]), [str(layer) for layer in layers])
            if max(values.shape) <= _ANNOTATE_UP_TO:
                _annotate(axis, values, image.norm, diverging=quantity in _RATIO_QUANTITIES)
        if row_labels:
            row_axes[0].set_ylabel(f"{row_labels[row_index]}\n\nlayer", fontsize=10)
        for axis in row_axes[len(row) :]:
            axis.set_visible(False)
    figure.colorbar(image, ax=axes.ravel().tolist(), label=label, shrink=0.9)
    figure.suptitle(title)
    return figure


def _annotate(axis, values: np.ndarray, norm, diverging: bool) -> None:
    """Write each value in its cell, in white on the dark ends of the colour map so it stays legible."""
    for layer in range(values.shape[0]):
        for head in range(values.shape[1]):
            position = float(norm(values[layer, head]))
            dark = abs(position - 0.5) > 0.3 if diverging else position < 0.5
            axis.text(
                head, layer, f"{values[layer, head]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if dark else "black",
            )


def figure_to_rgb(figure: Figure) -> np.ndarray:
    """`[height, width, 3]` uint8 pixels, the format wandb and TensorBoard images both accept."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
