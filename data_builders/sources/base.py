"""What every source shares: reading JSON/JSONL files into (record id, raw record) pairs, and the error policy."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterator

from PIL import Image

from xmodal.core.errors import DataError, ErrorPolicy
from ..sample import check_sample


class Source:
    """A source turns raw records into samples (docs/design.md); `records()` is computed once and cached.

    Subclasses yield `(file, record_id, raw)` from `_raw_records` and convert one raw record in `_to_sample`,
    raising `DataError` for anything wrong; the policy then raises or counts it in `skipped`.
    """

    def __init__(self, name: str, on_error: str = "raise", limit: int | None = None):
        self.name = name
        self.limit = limit
        self._policy = ErrorPolicy(on_error)
        self._records: list[dict] | None = None

    @property
    def skipped(self) -> Counter:
        return self._policy.skipped

    def records(self) -> list[dict]:
        if self._records is None:
            self._records = []
            seen: Counter = Counter()
            for file, record_id, raw in self._raw_records():
                if self.limit is not None and len(self._records) >= self.limit:
                    break
                try:
                    if isinstance(raw, DataError):
                        raise raw
                    sample = self._to_sample(file, record_id, raw)
                    check_sample(sample, file, record_id)
                except DataError as error:
                    self._policy.handle(error)
                    continue
                # Real files repeat ids (e.g. several conversations about one image): number the repeats.
                seen[sample["id"]] += 1
                if seen[sample["id"]] > 1:
                    sample["id"] = f"{sample['id']}#{seen[sample['id']]}"
                self._records.append(sample)
        return self._records

    def _raw_records(self) -> Iterator[tuple[str, object, object]]:
        raise NotImplementedError

    def _to_sample(self, file: str, record_id: object, raw) -> dict:
        raise NotImplementedError


def read_json_records(path: str | Path) -> Iterator[tuple[str, object, object]]:
    """Records of a `.json` (a list, or a dict keyed by record id as PGPS9K is) or `.jsonl` file.

    A malformed JSONL line is yielded as a DataError so the source's policy can skip and count it; a JSON file
    that does not parse at all cannot be partly read and always raises.
    """
    file = str(path)
    if file.endswith(".jsonl"):
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    error = DataError(file, f"line {number}", "<json>", str(exc), "malformed JSON")
                    yield file, f"line {number}", error
                    continue
                yield file, _record_id(raw, f"line {number}"), raw
        return
    try:
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(file, None, "<json>", f"file is not valid JSON: {exc}") from exc
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, raw in items:
        yield file, _record_id(raw, key), raw


def _record_id(raw, fallback):
    return raw.get("id", fallback) if isinstance(raw, dict) else fallback


def require(raw, file: str, record_id: object, field: str, kind: type | tuple[type, ...] = str):
    """`raw[field]`, or a DataError naming the field when the record is not a dict, lacks it, or has the wrong type."""
    if not isinstance(raw, dict):
        raise DataError(
            file, record_id, "<record>", f"expected a JSON object, got {type(raw).__name__}", "not an object"
        )
    if field not in raw or raw[field] is None:
        raise DataError(file, record_id, field, "missing", "missing field")
    value = raw[field]
    if not isinstance(value, kind):
        raise DataError(file, record_id, field, f"expected {kind}, got {type(value).__name__}", "wrong type")
    return value


def existing_image(folder: str | Path, name: str, file: str, record_id: object, field: str) -> str:
    """The absolute path of image `name` under `folder`, or a DataError naming the record's field.

    The file is opened and verified here (its header and checksums, not a full decode), so an empty or
    corrupt image is reported with its record before any training starts.
    """
    path = (Path(folder) / name).resolve()
    if not path.is_file():
        raise DataError(file, record_id, field, f"image file not found: {path}", "missing image file")
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports corrupt files through all three
        raise DataError(
            file, record_id, field, f"unreadable image file {path}: {exc}", "unreadable image file"
        ) from exc
    return str(path)


def read_file_or_hub(path: str, split: str = "train") -> Iterator[tuple[str, object, object]]:
    """Records of a local JSON/JSONL file, or of a hub dataset when `path` is not a local file (needs network)."""
    if Path(path).exists():
        yield from read_json_records(path)
        return
    import datasets  # only hub users pay for the import

    for index, row in enumerate(datasets.load_dataset(path, split=split)):
        yield path, _record_id(row, index), row
