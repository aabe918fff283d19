"""ShareGPT-style conversations (`[{"from": "human"|"gpt", "value": ...}]`) as typed chat messages."""

from __future__ import annotations

from xmodal.core.errors import DataError
from ..sample import message, split_placeholders, text_part

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def conversation_messages(turns, file: str, record_id: object, placeholder: str | None) -> list[dict]:
    """Each turn becomes a message; `placeholder` (e.g. `<image>`) marks image parts, None forbids them."""
    if not isinstance(turns, list) or not turns:
        raise DataError(file, record_id, "conversations", "expected a non-empty list of turns", "bad conversations")
    messages = []
    for index, turn in enumerate(turns):
        field = f"conversations[{index}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataError(file, record_id, field, "a turn needs a string 'value'", "bad turn")
        role = ROLE_NAMES.get(turn.get("from"))
        if role is None:
            raise DataError(
                file, record_id, f"{field}.from", f"unknown speaker {turn.get('from')!r}", "unknown speaker"
            )
        value = turn["value"]
        if placeholder is None:
            if "<image>" in value:
                raise DataError(file, record_id, field, "image placeholder in a text-only record", "image placeholder")
            parts = [text_part(value)]
        else:
            parts = split_placeholders(value, placeholder)
        messages.append(message(role, parts))
    return messages
