"""Chat templates from the checkpoint: a conversation's prompt and answer text as the model's own processor renders it.

No family's format is written here. Each assistant turn's supervised text is what `processor.apply_chat_template`
adds when that turn is appended to the conversation before it, rendered as an inference prompt
(`add_generation_prompt=True`): so the tokens before every answer are the tokens the model is prompted with at
inference, whatever the family.
"""

from __future__ import annotations

from xmodal.core.errors import ConfigError

_MARK = "\x1fxmodal-mark\x1f"  # a text no template alters, to find where a template puts an image part


def render(processor, messages: list[dict], add_generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def image_text(processor) -> str:
    """The text the template writes for one image content part (e.g. `<image>\\n`, or Qwen's vision markers around
    `<|image_pad|>`): the processor expands it into the image's tokens. Found by rendering a user turn with and
    without an image and keeping the difference; a template that cannot be used (none, or image parts dropped)
    stops here with one line."""
    name = type(processor).__name__
    if not getattr(processor, "chat_template", None):
        raise ConfigError(f"model: its processor ({name}) has no chat template; xmodal renders prompts only through one")
    text_only = [{"role": "user", "content": [{"type": "text", "text": _MARK}]}]
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _MARK}]}]
    try:
        plain, imaged = render(processor, text_only, True), render(processor, with_image, True)
    except Exception as error:  # a template may raise anything (jinja's raise_exception included)
        raise ConfigError(f"model: the chat template of {name} cannot render an image+text user turn: {error}") from error
    start = 0
    while start < min(len(plain), len(imaged)) and plain[start] == imaged[start]:
        start += 1
    end = 0
    while end < min(len(plain), len(imaged)) - start and plain[-1 - end] == imaged[-1 - end]:
        end += 1
    inserted = imaged[start : len(imaged) - end]
    if not inserted or len(imaged) - len(plain) != len(inserted):
        raise ConfigError(f"model: the chat template of {name} writes nothing for an image content part; it cannot take images")
    return inserted


def render_segments(processor, messages: list[dict]) -> list[tuple[str, bool]]:
    """Split a conversation into `(text, supervised)` segments whose concatenation is the template's rendering.

    Every assistant turn is supervised (its answer and end-of-turn marker, so the model learns to stop; whitespace
    the template writes after the marker is not), so a multi-turn instance trains on each answer; builders that
    want only some answers supervised mark the others `"train": False`. A template that rewrites earlier turns
    when a later one is added (the renderings are not prefixes of each other) cannot be split and is refused.
    """
    for message in messages:
        if message["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {message['role']!r} (expected system, user or assistant)")
        if not isinstance(message["content"], list):
            raise TypeError(f"content of a {message['role']} turn must be a list of typed parts")
    segments: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(processor, messages[:index], True)
        turn = render(processor, messages[: index + 1], False)
        if not prompt.startswith(done) or not turn.startswith(prompt):
            raise ConfigError(
                f"model: the chat template of {type(processor).__name__} renders turn {index} differently once it is "
                "followed by another, so answers cannot be told from prompts"
            )
        answer = turn[len(prompt) :]
        supervised = answer.rstrip()
        segments += [(prompt[len(done) :], False), (supervised, message.get("train", True))]
        done = prompt + supervised
    tail = render(processor, messages, False)
    if not tail.startswith(done):
        raise ConfigError(f"model: the chat template of {type(processor).__name__} rewrites earlier turns of a conversation")
    segments.append((tail[len(done) :], False))
    return [(text, supervised) for text, supervised in segments if text]
