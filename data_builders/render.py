"""Deterministic images from text: passages rendered with Pillow's built-in font, and facts drawn in fixed cells.

The same content and settings always give the same PNG bytes, written once into a cache directory keyed by
their hash, so a config rebuilds the same files and parallel builders never see half-written images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

from xmodal.core.atomic import atomic_file

CACHE_ENV = "XMODAL_CACHE"


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Where generated images live: `root`, else `$XMODAL_CACHE`, else `~/.cache/xmodal` (each + `/render`)."""
    base = root or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "xmodal"
    return Path(base).expanduser().resolve() / "render"


@dataclass(frozen=True)
class TextStyle:
    """How a passage becomes an image; every field is part of the cache key."""

    width: int = 448
    height: int = 448
    font_size: int = 24
    min_font_size: int = 8  # the font shrinks one point at a time down to this when the passage does not fit
    margin: int = 8
    line_spacing: int = 4
    background: str = "white"
    foreground: str = "black"


def render_text(text: str, style: TextStyle | dict | None = None, root: str | os.PathLike | None = None) -> str:
    """Render `text` wrapped to the image width; returns the cached PNG's absolute path."""
    style = _as_style(style)

    def draw() -> Image.Image:
        font, lines = _fit(text, style)
        image = Image.new("RGB", (style.width, style.height), style.background)
        canvas = ImageDraw.Draw(image)
        y = style.margin
        for line in lines:
            canvas.text((style.margin, y), line, font=font, fill=style.foreground)
            y += _line_height(font) + style.line_spacing
        return image

    return _cached_png("text", {"text": text, **asdict(style)}, draw, root)


def render_cells(
    glyphs: list[str | None],
    image_size: int = 64,
    columns: int | None = None,
    foreground: str = "black",
    background: str = "white",
    root: str | os.PathLike | None = None,
) -> str:
    """Draw one large glyph per fixed cell (row-major grid, `None` = empty cell); returns the PNG's path.

    A random-init vision tower learns symbols in fixed positions far more easily than free text, so each
    fact owns a cell and the cell's position says which key it is.
    """
    columns = columns or math.ceil(math.sqrt(len(glyphs)))
    rows = math.ceil(len(glyphs) / columns)
    settings = {"glyphs": glyphs, "size": image_size, "columns": columns, "fg": foreground, "bg": background}

    def draw() -> Image.Image:
        cell_w, cell_h = image_size / columns, image_size / rows
        image = Image.new("RGB", (image_size, image_size), background)
        canvas = ImageDraw.Draw(image)
        for index, glyph in enumerate(glyphs):
            if glyph is None:
                continue
            size = max(int(min(cell_w, cell_h) * 0.8 / max(1, len(glyph) ** 0.5)), 6)
            font = ImageFont.load_default(size=size)
            centre = ((index % columns + 0.5) * cell_w, (index // columns + 0.5) * cell_h)
            canvas.text(centre, glyph, font=font, fill=foreground, anchor="mm")
        return image

    return _cached_png("cells", settings, draw, root)


def _as_style(style: TextStyle | dict | None) -> TextStyle:
    if style is None:
        return TextStyle()
    return style if isinstance(style, TextStyle) else TextStyle(**dict(style))


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


def _wrap(text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    """Greedy word wrap by pixel width; a word wider than the line is split by characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:
                if font.getlength(line + char) > max_width and line:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


def _fit(text: str, style: TextStyle) -> tuple[ImageFont.FreeTypeFont, list[str]]:
    inner_w, inner_h = style.width - 2 * style.margin, style.height - 2 * style.margin
    for size in range(style.font_size, style.min_font_size - 1, -1):
        font = ImageFont.load_default(size=size)
        lines = _wrap(text, font, inner_w)
        if len(lines) * (_line_height(font) + style.line_spacing) - style.line_spacing <= inner_h:
            return font, lines
    raise ValueError(
        f"passage does not fit a {style.width}x{style.height} image even at font size {style.min_font_size}: "
        f"{text[:80]!r}; raise the render size or lower min_font_size"
    )


def _cached_png(kind: str, settings: dict, draw: Callable[[], Image.Image], root) -> str:
    key = hashlib.sha256(json.dumps([kind, settings], sort_keys=True).encode()).hexdigest()[:32]
    directory = cache_dir(root)
    path = directory / f"{kind}-{key}.png"
    if not path.exists():
        with atomic_file(path, "wb") as handle:
            draw().save(handle, format="PNG")
    return str(path)
