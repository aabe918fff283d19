"""Text-only instructions (Alpaca `instruction`/`input`/`output`, or ShareGPT `conversations` without images)."""

from __future__ import annotations

from xmodal.core.errors import DataError
from ..sample import make_sample, message, text_part
from .base import Source, read_file_or_hub, require
from .sharegpt import conversation_messages


class TextOnlySource(Source):
    """`path`: a JSON/JSONL file (or a hub dataset name); each record is Alpaca- or ShareGPT-shaped."""

    def __init__(
        self,
        path: str,
        name: str = "text_only",
        split: str = "train",
        input_separator: str = "\n\n",  # between an Alpaca instruction and its input
        on_error: str = "raise",
        limit: int | None = None,
    ):
        super().__init__(name, on_error, limit)
        self.path = path
        self.split = split
        self.input_separator = input_separator

    def _raw_records(self):
        return read_file_or_hub(self.path, self.split)

    def _to_sample(self, file, record_id, raw):
        if isinstance(raw, dict) and "conversations" in raw:
            if raw.get("image"):
                raise DataError(file, record_id, "image", "a text-only source cannot take images", "image in text-only")
            messages = conversation_messages(raw["conversations"], file, record_id, placeholder=None)
        else:
            instruction = require(raw, file, record_id, "instruction")
            output = require(raw, file, record_id, "output")
            extra = raw.get("input") or ""
            if not isinstance(extra, str):
                raise DataError(file, record_id, "input", "expected a string", "wrong type")
            prompt = f"{instruction}{self.input_separator}{extra}" if extra else instruction
            messages = [message("user", [text_part(prompt)]), message("assistant", [text_part(output)])]
        return make_sample(f"{self.name}/{record_id}", self.name, messages, [])
