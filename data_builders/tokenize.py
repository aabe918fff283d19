"""Turn instances into token ids and assistant-only labels through the model's processor, cached with `datasets`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import datasets
from PIL import Image

from xmodal.core.tokens import IGNORE_INDEX
from xmodal.data_builders.records import SAMPLE_COLUMN, ArrowRecords, is_stream
from xmodal.core.errors import ConfigError
from xmodal.data_builders.templates import image_text, render_segments

logger = logging.getLogger(__name__)


class EncodingError(ValueError):
    """An instance that cannot be encoded; the message names the instance and the field."""


@dataclass(frozen=True)
class EncodingSettings:
    max_length: int = 1024
    overlong: str = "drop"  # drop (counted and logged) | error; image tokens are never truncated
    # Tokenizing processes: how fast, not what comes out, so not part of the cache key (left out of repr).
    num_proc: int = field(default=1, repr=False, compare=False)

    def __post_init__(self):
        if self.overlong not in ("drop", "error"):
            raise ValueError(f"overlong must be 'drop' or 'error', got {self.overlong!r}")


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def encode_view(messages: list[dict], image_paths: list[str], processor, where: str) -> dict:
    """Token ids and labels of one conversation, rendered by the processor's chat template; images expand to exactly
    as many tokens as the model will see."""
    segments = _segments(processor, messages, where)
    image = image_text(processor)
    placeholders = sum(text.count(image) for text, _ in segments)
    if placeholders != len(image_paths):
        raise EncodingError(
            f"{where}: field 'images' has {len(image_paths)} path(s) but 'messages' has {placeholders} image part(s)"
        )
    remaining = list(image_paths)
    input_ids: list[int] = []
    labels: list[int] = []
    for text, supervised in segments:
        count = text.count(image)
        paths, remaining = remaining[:count], remaining[count:]
        images = [_open_image(path, where) for path in paths]
        ids = processor(text=[text], images=images or None, add_special_tokens=False)["input_ids"][0]
        ids = list(ids)
        input_ids.extend(ids)
        labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))
    return {"input_ids": input_ids, "labels": labels, "images": list(image_paths)}


def _segments(processor, messages: list[dict], where: str) -> list[tuple[str, bool]]:
    try:
        return render_segments(processor, messages)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise EncodingError(f"{where}: field 'messages' is malformed: {error}") from error


def _open_image(path: str, where: str) -> Image.Image:
    try:
        return load_rgb(path)
    except (FileNotFoundError, OSError) as error:
        raise EncodingError(f"{where}: field 'images' names an unreadable image {path!r}: {error}") from error


def encode_instance(instance: dict, processor, settings: EncodingSettings) -> dict | None:
    """Encode an instance (and its teacher view, if paired); None when it is over-long and settings say drop."""
    where = f"instance {instance.get('id')!r}"
    encoded = encode_view(instance["messages"], instance.get("images", []), processor, where)
    teacher = instance.get("teacher")
    if teacher:
        view = encode_view(teacher["messages"], teacher.get("images", []), processor, f"{where} (teacher)")
        if _supervised(view["labels"]) != _supervised(encoded["labels"]):
            raise EncodingError(f"{where}: field 'teacher' does not share the student's target tokens")
        encoded.update({f"teacher_{key}": value for key, value in view.items()})
    longest = max(len(encoded["input_ids"]), len(encoded.get("teacher_input_ids", [])))
    if longest > settings.max_length:
        if settings.overlong == "error":
            raise EncodingError(
                f"{where}: {longest} tokens (image tokens included) exceed max_length={settings.max_length}"
            )
        return None
    if not any(label != IGNORE_INDEX for label in encoded["labels"]):
        raise EncodingError(f"{where}: field 'messages' has no supervised assistant turn")
    return encoded


def _supervised(labels: list[int]) -> list[int]:
    return [label for label in labels if label != IGNORE_INDEX]


def _fingerprint(instances, processor, settings: EncodingSettings) -> str:
    digest = hashlib.sha256()
    if isinstance(instances, ArrowRecords):
        # `datasets` fingerprints a table by its origin and every transform since (source file, preparation,
        # shuffle, select); the prepared images are named by their content.
        digest.update(instances.dataset._fingerprint.encode())
    else:
        digest.update(json.dumps(instances, sort_keys=True).encode())
        for instance in instances:  # images edited in place must invalidate the cache
            for path in instance.get("images", []) + (instance.get("teacher") or {}).get("images", []):
                stat = os.stat(path) if os.path.exists(path) else None
                digest.update(f"{path}:{stat and stat.st_size}:{stat and stat.st_mtime_ns}".encode())
    digest.update(processor.tokenizer.backend_tokenizer.to_str().encode())
    digest.update(processor.image_processor.to_json_string().encode())
    digest.update(repr((processor.chat_template, settings)).encode())
    return digest.hexdigest()[:24]


def tokenize_instances(instances, processor, settings: EncodingSettings, cache_dir: str):
    """A `datasets.Dataset` of encoded instances; re-running with the same inputs loads the cached Arrow file.

    `instances`: a list, `ArrowRecords` (tokenized by `settings.num_proc` processes straight from the table), or
    a `datasets.IterableDataset` of serialized instances (data.streaming=true), encoded lazily as it is read.
    """
    image_text(processor)  # a template that cannot train stops here, in one line, before any instance

    def encode_batch(batch):
        columns: dict[str, list] = {"input_ids": [], "labels": [], "images": [], "length": []}
        paired = False
        for serialized in batch[SAMPLE_COLUMN]:
            encoded = encode_instance(json.loads(serialized), processor, settings)
            if encoded is None:
                continue
            if "teacher_input_ids" in encoded:
                paired = True
                for key in ("teacher_input_ids", "teacher_labels", "teacher_images"):
                    columns.setdefault(key, []).append(encoded[key])
            for key in ("input_ids", "labels", "images"):
                columns[key].append(encoded[key])
            # The padded length this instance forces on its batch (image tokens included): a paired instance
            # adds two rows, padded together, so its longer view counts. Length-grouped sampling reads it.
            columns["length"].append(max(len(encoded["input_ids"]), len(encoded.get("teacher_input_ids", []))))
        if paired and len(columns["teacher_input_ids"]) != len(columns["input_ids"]):
            raise EncodingError("a build mixes paired and unpaired instances; pairs must be all-or-none")
        return columns

    if is_stream(instances):
        return instances.map(encode_batch, batched=True, batch_size=64, remove_columns=[SAMPLE_COLUMN])
    os.makedirs(cache_dir, exist_ok=True)
    cache_file = os.path.join(cache_dir, f"tokenized-{_fingerprint(instances, processor, settings)}.arrow")
    if isinstance(instances, ArrowRecords):
        raw = instances.dataset
    else:
        raw = datasets.Dataset.from_dict({SAMPLE_COLUMN: [json.dumps(instance) for instance in instances]})
    encoded = raw.map(
        encode_batch,
        batched=True,
        batch_size=256,
        remove_columns=raw.column_names,
        cache_file_name=cache_file,
        load_from_cache_file=True,
        num_proc=settings.num_proc if settings.num_proc > 1 and len(raw) >= 2 * settings.num_proc else None,
        desc="Tokenizing",
    )
    dropped = len(raw) - len(encoded)
    if dropped:
        logger.warning(
            "dropped %d of %d instances longer than max_length=%d tokens (image tokens included)",
            dropped,
            len(raw),
            settings.max_length,
        )
    return encoded
