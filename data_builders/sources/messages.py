"""Users' own conversations: OpenAI/TRL `messages` or LLaMA-Factory ShareGPT records with `images`, from a file,
a saved dataset or the Hugging Face Hub, prepared once into Arrow (or streamed) rather than held in a list.

Layouts (`layout`):
- `messages` (OpenAI / TRL): `messages: [{role, content}]`, `content` a string or a list of `{"type": "text",
  "text": ...}` / `{"type": "image"}` parts; the i-th image part is `images[i]` (or, without `images`, the part's
  own `"image"`).
- `sharegpt` (LLaMA-Factory): `messages` or `conversations`, turns `{role, content}` or `{from, value}`, with
  `<image>` placeholders in the text standing for `images` in order, and an optional top-level `system`; LLaVA's
  own files (`conversations` + `image`) read the same way.

An entry of `images` is a path (relative to `image_folder`, else to the record file's folder), a URL (fetched
unless offline), or image data: bytes, `{"bytes": ..., "path": ...}` as a `datasets.Image()` column stores it,
or a PIL image. Image data is verified and written once, named by its content, under `<cache_dir>/images/`,
so everything downstream (tokenization, the collator, xmodal-data) reads files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
from PIL import Image

from xmodal.core.atomic import atomic_file
from xmodal.core.errors import ConfigError, DataError, ErrorPolicy
from ..records import SAMPLE_COLUMN, ArrowRecords
from ..sample import ROLES, check_sample, image_part, make_sample, message, split_placeholders, text_part
from .base import existing_image, read_json_records
from .sharegpt import ROLE_NAMES

LAYOUTS = ("messages", "sharegpt")
# Bump when the conversion changes, so prepared caches of an older conversion are not reused.
PREPARATION_VERSION = "1"
_ERROR_COLUMN = "error"
_FILE_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class Conversion:
    """Everything a worker process needs to turn one raw record into a sample (picklable for `num_proc`)."""

    layout: str
    name: str
    placeholder: str
    image_folder: str | None
    file_folder: str | None  # relative image paths resolve here when image_folder is unset
    image_cache: str
    offline: bool


class MessagesSource:
    """`path`: a .json/.jsonl/.parquet/.arrow file, a `save_to_disk` folder, or a Hub dataset name.

    Map-style (default): records are converted and their images checked once, by `num_proc` processes, into an
    Arrow table cached by content under `cache_dir`; `records()` reads it back as `ArrowRecords`. Under a
    distributed launch the recipe prepares on the main process first, so the other ranks load the cache.
    `streaming=True`: `records()` is a `datasets.IterableDataset` converted as it is read; a bad record met
    mid-run is skipped and counted in `skipped` (on_error=skip) or stops the run naming file, record and field.
    """

    def __init__(
        self,
        path: str,
        layout: str = "messages",
        image_folder: str | None = None,
        name: str = "messages",
        split: str = "train",
        placeholder: str = "<image>",
        streaming: bool = False,
        num_proc: int = 1,
        cache_dir: str | None = None,
        on_error: str = "raise",
        limit: int | None = None,
    ):
        if layout not in LAYOUTS:
            raise ConfigError(f"data.layout: unknown layout {layout!r}; one of {LAYOUTS}")
        self.path = path
        self.name = name
        self.split = split
        self.streaming = streaming
        self.num_proc = max(1, int(num_proc))
        self.limit = limit
        self._policy = ErrorPolicy(on_error)
        self.cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "xmodal")
        local = Path(path).expanduser()
        self.conversion = Conversion(
            layout=layout,
            name=name,
            placeholder=placeholder,
            image_folder=str(Path(image_folder).expanduser().resolve()) if image_folder else None,
            file_folder=str(local.resolve().parent) if local.is_file() else None,
            image_cache=os.path.join(self.cache_dir, "images"),
            offline=_offline(),
        )
        self._records = None

    @property
    def skipped(self) -> Counter:
        return self._policy.skipped

    def records(self):
        if self._records is None:
            self._records = self._stream() if self.streaming else self._prepared()
        return self._records

    def _raw(self, streaming: bool):
        """The raw rows, as `datasets` reads them; JSON records arrive as one JSON string each (see _json_rows)."""
        local = Path(self.path).expanduser()
        kind = _FILE_SUFFIXES.get(local.suffix) if local.is_file() else None
        # Arrow copies of files and Hub downloads go to the run's cache, not ~/.cache/huggingface.
        options = {} if streaming else {"cache_dir": os.path.join(self.cache_dir, "datasets")}
        if kind == "json":
            # Arrow's JSON reader needs one type per field, and `content` is a string in one message and a list
            # of parts in the next: records travel as JSON text and are parsed by the conversion.
            factory = datasets.IterableDataset if streaming else datasets.Dataset
            stat = local.stat()
            return factory.from_generator(
                _json_rows, gen_kwargs={"path": str(local.resolve()), "version": (stat.st_size, stat.st_mtime_ns)},
                **options,
            )
        if kind is not None:
            return datasets.load_dataset(kind, data_files=str(local), split="train", streaming=streaming, **options)
        if local.is_dir() and ((local / "dataset_info.json").exists() or (local / "state.json").exists()):
            dataset = datasets.load_from_disk(str(local))
            return dataset.to_iterable_dataset() if streaming else dataset
        if local.exists():
            raise DataError(
                self.path, None, "path", "not a .json/.jsonl/.parquet/.arrow file or a save_to_disk folder", "bad path"
            )
        try:
            return datasets.load_dataset(self.path, split=self.split, streaming=streaming, **options)
        except Exception as error:  # the Hub client raises many kinds; the user needs the one line
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(
                self.path, None, "path", f"no such file, and not loadable as a Hub dataset: {first_line}"
            ) from error

    def _prepared(self) -> ArrowRecords:
        raw = self._raw(streaming=False)
        key = hashlib.sha256(repr((raw._fingerprint, self.conversion, PREPARATION_VERSION)).encode()).hexdigest()[:24]
        folder = os.path.join(self.cache_dir, "prepared")
        os.makedirs(folder, exist_ok=True)
        if _undecoded(raw.features) != raw.features:
            raw = raw.cast(_undecoded(raw.features), cache_file_name=os.path.join(folder, f"{key}-undecoded.arrow"))
        prepared = raw.map(
            convert_row,
            with_indices=True,
            fn_kwargs={"conversion": self.conversion, "source_file": self.path},
            remove_columns=raw.column_names,
            num_proc=min(self.num_proc, len(raw)) if self.num_proc > 1 else None,
            cache_file_name=os.path.join(folder, f"{key}.arrow"),
            load_from_cache_file=True,
            desc="Checking records and images",
        )
        for problem in prepared[_ERROR_COLUMN]:
            if problem:
                self._policy.handle(DataError(**json.loads(problem)))
        good = prepared.filter(lambda error: not error, input_columns=_ERROR_COLUMN, cache_file_name=
                               os.path.join(folder, f"{key}-good.arrow"))
        good = good.remove_columns(_ERROR_COLUMN)
        if self.limit is not None:
            good = good.select(range(min(self.limit, len(good))))
        return ArrowRecords(good)

    def _stream(self) -> datasets.IterableDataset:
        raw = self._raw(streaming=True)
        if raw.features is not None:  # image columns as {"bytes", "path"}: written once by content, never decoded
            raw = raw.decode(False)

        def convert_or_count(row, index):
            converted = convert_row(row, index, self.conversion, self.path)
            if converted[_ERROR_COLUMN]:
                self._policy.handle(DataError(**json.loads(converted[_ERROR_COLUMN])))
            return converted

        stream = raw.map(convert_or_count, with_indices=True).select_columns([SAMPLE_COLUMN, _ERROR_COLUMN])
        stream = stream.filter(lambda error: not error, input_columns=_ERROR_COLUMN).select_columns([SAMPLE_COLUMN])
        return stream.take(self.limit) if self.limit is not None else stream


def _json_rows(path: str, version):
    """A JSON/JSONL file's records as `{file, record_id, raw}` rows of JSON text (`version` keys the cache)."""
    for file, record_id, raw in read_json_records(path):
        if isinstance(raw, DataError):
            raw = {"__error__": {"field": raw.field, "problem": raw.problem, "reason": raw.reason}}
        yield {"file": file, "record_id": json.dumps(record_id), "raw": json.dumps(raw)}


def _undecoded(features: datasets.Features) -> datasets.Features:
    """The same features with every `Image()` left as `{"bytes", "path"}` (the conversion writes the bytes)."""

    def plain(feature):
        if isinstance(feature, datasets.Image):
            return datasets.Image(decode=False)
        if isinstance(feature, (datasets.List, datasets.LargeList)):
            return type(feature)(plain(feature.feature))
        if isinstance(feature, dict):
            return {key: plain(value) for key, value in feature.items()}
        return feature

    return datasets.Features({key: plain(value) for key, value in features.items()})


def convert_row(row: dict, index: int, conversion: Conversion, source_file: str) -> dict:
    """One raw row -> `{instance: sample JSON, error: ""}`, or `{instance: "", error: DataError fields as JSON}`."""
    if set(row) == {"file", "record_id", "raw"}:
        file, record_id, raw = row["file"], json.loads(row["record_id"]), json.loads(row["raw"])
    else:
        file, record_id, raw = source_file, row.get("id", index), dict(row)  # map passes a lazy row
    try:
        if isinstance(raw, dict) and "__error__" in raw:
            raise DataError(file, record_id, **raw["__error__"])
        sample = to_sample(raw, file, record_id, conversion)
        check_sample(sample, file, record_id)
    except DataError as error:
        fields = dict(file=error.file, record_id=error.record_id, field=error.field, problem=error.problem,
                      reason=error.reason)
        return {SAMPLE_COLUMN: "", _ERROR_COLUMN: json.dumps(fields, default=str)}
    return {SAMPLE_COLUMN: json.dumps(sample), _ERROR_COLUMN: ""}


def to_sample(raw, file: str, record_id, conversion: Conversion) -> dict:
    if not isinstance(raw, dict):
        raise DataError(file, record_id, "<record>", f"expected an object, got {type(raw).__name__}", "not an object")
    if conversion.layout == "messages":
        messages = _typed_messages(raw.get("messages"), file, record_id)
    else:
        messages = _sharegpt_messages(raw, file, record_id, conversion.placeholder)
    images = raw.get("images")
    if images is None and conversion.layout == "sharegpt":
        images = raw.get("image")  # LLaVA's own files name the key in the singular
    images = [] if images is None else images
    images = images if isinstance(images, list) else [images]
    entries = [(f"images[{i}]", entry) for i, entry in enumerate(images)]
    if not entries and conversion.layout == "messages":
        entries = _inline_images(raw["messages"])
    paths = [_image_file(entry, conversion, file, record_id, field) for field, entry in entries]
    return make_sample(f"{conversion.name}/{record_id}", conversion.name, messages, paths)


def _typed_messages(turns, file: str, record_id) -> list[dict]:
    if turns is None:
        raise DataError(file, record_id, "messages", "missing", "missing field")
    if not isinstance(turns, list) or not turns:
        raise DataError(file, record_id, "messages", "expected a non-empty list of messages", "bad messages")
    messages = []
    for index, turn in enumerate(turns):
        field = f"messages[{index}]"
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ROLES:
            raise DataError(file, record_id, f"{field}.role", f"unknown role {role!r}; one of {ROLES}", "unknown role")
        content = turn.get("content")
        if isinstance(content, str):
            parts = [text_part(content)]
        elif isinstance(content, list):
            parts = [_typed_part(part, file, record_id, f"{field}.content[{i}]") for i, part in enumerate(content)]
        else:
            raise DataError(file, record_id, f"{field}.content", "expected a string or a list of parts", "bad content")
        messages.append(message(role, parts))
    return messages


def _inline_images(turns: list[dict]) -> list[tuple[str, object]]:
    """(field, image) of image parts that carry their image (`{"type": "image", "image": ...}`, as TRL accepts)."""
    return [
        (f"messages[{i}].content[{j}].image", part["image"])
        for i, turn in enumerate(turns)
        if isinstance(turn["content"], list)
        for j, part in enumerate(turn["content"])
        if part.get("type") == "image" and part.get("image") is not None
    ]


def _typed_part(part, file: str, record_id, field: str) -> dict:
    # Parquet and Hub datasets store parts as structs with every key, unused ones None.
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "image":
        return image_part()
    if kind == "text" and isinstance(part.get("text"), str):
        return text_part(part["text"])
    raise DataError(file, record_id, field, f"expected a text or image part, got {part!r}", "bad content part")


def _sharegpt_messages(raw: dict, file: str, record_id, placeholder: str) -> list[dict]:
    field = "messages" if "messages" in raw else "conversations"
    turns = raw.get(field)
    if not isinstance(turns, list) or not turns:
        raise DataError(file, record_id, field, "expected a non-empty list of turns", "bad messages")
    messages = []
    system = raw.get("system")
    if system:
        if not isinstance(system, str):
            raise DataError(file, record_id, "system", "expected a string", "wrong type")
        messages.append(message("system", [text_part(system)]))
    for index, turn in enumerate(turns):
        where = f"{field}[{index}]"
        if not isinstance(turn, dict):
            raise DataError(file, record_id, where, "a turn is an object", "bad turn")
        speaker_key, text_key = ("role", "content") if "role" in turn else ("from", "value")
        role = ROLE_NAMES.get(turn.get(speaker_key))
        if role is None:
            raise DataError(
                file, record_id, f"{where}.{speaker_key}", f"unknown speaker {turn.get(speaker_key)!r}", "unknown speaker"
            )
        if not isinstance(turn.get(text_key), str):
            raise DataError(file, record_id, f"{where}.{text_key}", "expected a string", "bad turn")
        messages.append(message(role, split_placeholders(turn[text_key], placeholder)))
    return messages


def _image_file(entry, conversion: Conversion, file: str, record_id, field: str) -> str:
    """The path of a checked image file for one `images` entry (path, URL, bytes, `{"bytes", "path"}`, PIL)."""
    if isinstance(entry, dict):
        if entry.get("bytes"):
            entry = entry["bytes"]
        elif entry.get("path"):
            entry = entry["path"]
        else:
            raise DataError(file, record_id, field, "an image entry needs `bytes` or `path`", "bad image entry")
    if isinstance(entry, Image.Image):
        buffer = io.BytesIO()
        entry.save(buffer, format=entry.format or "PNG")
        entry = buffer.getvalue()
    if isinstance(entry, str) and entry.startswith(("http://", "https://")):
        if conversion.offline:
            # Not a property of one record (every URL fails alike), so not skippable: the run stops at start.
            raise ConfigError(
                f"{file}: record {record_id!r}, field {field!r}: image URL {entry} cannot be fetched offline "
                "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set): download the images and give their paths"
            )
        with urllib.request.urlopen(entry, timeout=60) as response:
            entry = response.read()
    if isinstance(entry, bytes):
        return _cached_image(entry, conversion.image_cache, file, record_id, field)
    if isinstance(entry, str):
        folder = conversion.image_folder or conversion.file_folder or "."
        path = existing_image(folder, entry, file, record_id, field)
        _decode(path, file, record_id, field)
        return path
    raise DataError(file, record_id, field, f"expected a path, bytes or an image, got {type(entry).__name__}", "wrong type")


def _decode(image_file, file: str, record_id, field: str) -> str:
    """Decode the whole image once, here, and return its format: `verify()` reads headers and checksums only, and
    a truncated JPEG passes it, to fail hours later in the training loop."""
    try:
        with Image.open(image_file) as image:
            image.load()
            return (image.format or "png").lower()
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports corrupt data through all three
        raise DataError(file, record_id, field, f"unreadable image data: {error}", "unreadable image data") from error


def _cached_image(data: bytes, folder: str, file: str, record_id, field: str) -> str:
    """Check image bytes and write them once, named by their content."""
    image_format = _decode(io.BytesIO(data), file, record_id, field)
    path = os.path.join(folder, f"{hashlib.sha256(data).hexdigest()[:32]}.{image_format}")
    if not os.path.exists(path):
        with atomic_file(path, "wb") as handle:
            handle.write(data)
    return path


def _offline() -> bool:
    return any(os.environ.get(flag, "0").lower() in ("1", "true", "yes") for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
