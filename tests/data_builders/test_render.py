"""Rendering is deterministic (same bytes, same cached file) and cached where $XMODAL_CACHE points."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from xmodal.data_builders.render import TextStyle, render_cells, render_text

STYLE = TextStyle(width=96, height=64, font_size=14)


def test_same_passage_gives_same_bytes_in_fresh_caches(tmp_path):
    first = render_text("The bridge opened in 1932.", STYLE, root=tmp_path / "one")
    second = render_text("The bridge opened in 1932.", STYLE, root=tmp_path / "two")
    assert first != second and Path(first).read_bytes() == Path(second).read_bytes()
    assert render_text("The bridge opened in 1932.", STYLE, root=tmp_path / "one") == first
    assert render_text("The bridge opened in 1933.", STYLE, root=tmp_path / "one") != first
    smaller = {**STYLE.__dict__, "font_size": 12}
    assert render_text("The bridge opened in 1932.", smaller, root=tmp_path / "one") != first


def test_cache_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))  # whatever another test's session cache set before
    path = Path(render_text("B = 7", STYLE))
    assert path.parent == tmp_path.resolve() / "render" and path.suffix == ".png"
    assert not list(path.parent.glob("*.tmp"))
    with Image.open(path) as image:
        assert image.size == (96, 64) and image.mode == "RGB"
        assert image.convert("L").getextrema()[0] < 64  # dark glyphs on white


def test_long_passages_wrap_and_impossible_ones_fail():
    long_text = "word " * 30
    with Image.open(render_text(long_text, TextStyle(width=200, height=200, font_size=16))) as image:
        rows = [image.convert("L").crop((0, y, 200, y + 1)).getextrema()[0] < 128 for y in range(200)]
    assert sum(1 for a, b in zip(rows, rows[1:]) if b and not a) >= 3  # several lines of text
    with pytest.raises(ValueError, match="does not fit"):
        render_text(long_text * 10, TextStyle(width=32, height=32))


def test_cells_put_each_glyph_in_its_own_cell():
    with Image.open(render_cells(["3", None, None, "7"], image_size=64)) as image:
        grey = image.convert("L")
        ink = {cell: grey.crop((x, y, x + 32, y + 32)).getextrema()[0] < 128
               for cell, (x, y) in enumerate([(0, 0), (32, 0), (0, 32), (32, 32)])}
    assert ink == {0: True, 1: False, 2: False, 3: True}
