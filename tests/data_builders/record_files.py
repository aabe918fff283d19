"""Helpers that write small record files and images for the source tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def write_records(path: Path, records) -> Path:
    """A .json file holds `records` as written; a .jsonl file gets one line per record (strings verbatim)."""
    if path.suffix == ".jsonl":
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def write_image(path: Path, colour: str = "white") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path
