"""LLaVA-Instruct / ShareGPT records with an image folder (`image` may be one file name, a list, or absent)."""

from __future__ import annotations

from xmodal.core.errors import DataError
from ..sample import make_sample
from .base import Source, existing_image, read_file_or_hub, require
from .sharegpt import conversation_messages


class LlavaInstructSource(Source):
    """`path`: a JSON/JSONL file (or a hub dataset name); `image_folder`: where the `image` names resolve.

    `<image>` placeholders become image parts where they stand; a record without `image` is text-only.
    """

    def __init__(
        self,
        path: str,
        image_folder: str | None = None,
        name: str = "llava_instruct",
        split: str = "train",
        placeholder: str = "<image>",
        on_error: str = "raise",
        limit: int | None = None,
    ):
        super().__init__(name, on_error, limit)
        self.path = path
        self.image_folder = image_folder
        self.split = split
        self.placeholder = placeholder

    def _raw_records(self):
        return read_file_or_hub(self.path, self.split)

    def _to_sample(self, file, record_id, raw):
        turns = require(raw, file, record_id, "conversations", list)
        names = raw.get("image") or []
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(file, record_id, "image", "expected a file name or a list of file names", "wrong type")
        if names and self.image_folder is None:
            raise DataError(
                file, record_id, "image", "record has images but data.image_folder is not set", "no image folder"
            )
        images = [existing_image(self.image_folder, n, file, record_id, "image") for n in names]
        messages = conversation_messages(turns, file, record_id, self.placeholder)
        return make_sample(f"{self.name}/{record_id}", self.name, messages, images)
