"""The sample dict of docs/design.md: constructors for its parts and the checks every emitted sample passes."""

from __future__ import annotations

from xmodal.core.errors import DataError

ROLES = ("system", "user", "assistant")


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def image_part() -> dict:
    return {"type": "image"}


def message(role: str, parts: list[dict], train: bool = True) -> dict:
    msg = {"role": role, "content": parts}
    if role == "assistant" and not train:
        msg["train"] = False
    return msg


def make_sample(
    sample_id: str,
    source: str,
    messages: list[dict],
    images: list[str],
    condition: str = "default",
    meta: dict | None = None,
) -> dict:
    """A sample whose `target` is the last assistant turn's text, as design.md defines it."""
    return {
        "id": sample_id,
        "source": source,
        "condition": condition,
        "messages": messages,
        "images": list(images),
        "target": last_answer(messages),
        "meta": meta or {},
    }


def last_answer(messages: list[dict]) -> str:
    answers = [m for m in messages if m["role"] == "assistant"]
    return content_text(answers[-1]["content"]) if answers else ""


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation up to (without) its last assistant turn: what the model answers."""
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    return messages[:last]


def content_text(parts: list[dict]) -> str:
    """The text of a message with image parts left out (what a text-only reader of the prompt sees)."""
    return "".join(part["text"] for part in parts if part["type"] == "text")


def prompt_text(sample: dict) -> str:
    """All user and system text of a sample (or a teacher view), image parts left out."""
    return "\n".join(content_text(m["content"]) for m in sample["messages"] if m["role"] != "assistant")


def count_image_parts(messages: list[dict]) -> int:
    return sum(part["type"] == "image" for m in messages for part in m["content"])


def split_placeholders(text: str, placeholder: str) -> list[dict]:
    """`"<image>\\nWhat is it?"` -> an image part then a text part; the placeholder's own newline goes with it."""
    parts: list[dict] = []
    pieces = text.split(placeholder)
    for index, piece in enumerate(pieces):
        if index > 0:
            parts.append(image_part())
            piece = piece[1:] if piece.startswith("\n") else piece
        if piece:
            parts.append(text_part(piece))
    return parts


def check_view(view: dict, file: str, record_id: object) -> None:
    """Messages and images agree with the contract: known roles, typed parts, one image path per image part."""
    messages = view.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(file, record_id, "messages", "no messages", "no messages")
    for index, msg in enumerate(messages):
        if msg.get("role") not in ROLES:
            raise DataError(
                file, record_id, f"messages[{index}].role", f"unknown role {msg.get('role')!r}", "unknown role"
            )
        for part in msg.get("content", []):
            if part.get("type") == "image":
                if set(part) != {"type"}:
                    raise DataError(
                        file, record_id, f"messages[{index}]", "image part with extra keys", "bad image part"
                    )
            elif part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise DataError(file, record_id, f"messages[{index}]", f"bad content part {part!r}", "bad content part")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(file, record_id, "messages", "no assistant turn", "no assistant turn")
    placeholders, images = count_image_parts(messages), len(view.get("images", []))
    if placeholders != images:
        raise DataError(
            file, record_id, "images", f"{placeholders} image placeholders but {images} images",
            "placeholder/image count mismatch",
        )


def check_sample(sample: dict, file: str = "<built>", record_id: object = None) -> None:
    """Validate an emitted sample (and its teacher view) against docs/design.md; raise DataError if it is off.

    Errors name `record_id` (the id in the source file) when given, else the sample's own id.
    """
    record_id = sample.get("id") if record_id is None else record_id
    for key in ("id", "source", "condition", "messages", "images", "target", "meta"):
        if key not in sample:
            raise DataError(file, record_id, key, "missing key", "missing key")
    check_view(sample, file, record_id)
    if sample["target"] != last_answer(sample["messages"]):
        raise DataError(file, record_id, "target", "target is not the last assistant answer", "target mismatch")
    if "teacher" in sample:
        check_view(sample["teacher"], file, record_id)
