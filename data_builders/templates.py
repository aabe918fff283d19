"""Chat templates: how a conversation of typed content parts becomes prompt and answer text per model family."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatTemplate:
    """One model family's chat format.

    Training renders a conversation as a sequence of segments; only assistant answers (with the end-of-turn
    marker, so the model learns to stop) are supervised. `jinja` is the same format for
    `processor.apply_chat_template` at inference time.
    """

    name: str
    prefix: str  # opens every conversation (e.g. BOS)
    system: str  # format of a system turn, `{content}`
    user: str  # format of a user turn, `{content}`
    assistant_header: str  # prompt side of an assistant turn (not trained)
    assistant_answer: str  # format of the supervised answer, `{content}`
    assistant_suffix: str  # after the answer, not trained (e.g. a newline after <|im_end|>)
    image: str  # one image content part, before the processor expands it to its image tokens
    default_system: str | None
    jinja: str

    def render_content(self, parts: list[dict]) -> str:
        return "".join(self.image if part["type"] == "image" else part["text"] for part in parts)


_LLAVA_JINJA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set content = namespace(text='') %}"
    "{% if message['content'] is string %}{% set content.text = message['content'] %}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{% set content.text = content.text + '<image>\n' %}"
    "{% else %}{% set content.text = content.text + part['text'] %}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ content.text + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + content.text + ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' + content.text + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# The system turn Qwen2-VL and Qwen2.5-VL checkpoints' own chat templates open with when a conversation has none:
# training prompts carry it too, so that they equal the prompts the checkpoint's template builds at inference.
_QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."
_QWEN2_JINJA = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + _QWEN2_DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEMPLATES: dict[str, ChatTemplate] = {
    # LLaVA-1.5 (Vicuna v1 format), as in llava-hf/llava-1.5-*-hf.
    "llava": ChatTemplate(
        name="llava",
        prefix="<s>",
        system="{content} ",
        user="USER: {content} ",
        assistant_header="ASSISTANT:",
        assistant_answer=" {content}</s>",
        assistant_suffix="",
        image="<image>\n",
        default_system=None,
        jinja=_LLAVA_JINJA,
    ),
    # ChatML with Qwen2-VL's vision markers, as in Qwen/Qwen2-VL-* and Qwen/Qwen2.5-VL-*.
    "qwen2": ChatTemplate(
        name="qwen2",
        prefix="",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_header="<|im_start|>assistant\n",
        assistant_answer="{content}<|im_end|>",
        assistant_suffix="\n",
        image="<|vision_start|><|image_pad|><|vision_end|>",
        default_system=_QWEN2_DEFAULT_SYSTEM,
        jinja=_QWEN2_JINJA,
    ),
}


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown chat template {name!r}; known: {sorted(TEMPLATES)}") from None


def render_segments(template: ChatTemplate, messages: list[dict]) -> list[tuple[str, bool]]:
    """Split a conversation into `(text, supervised)` segments whose concatenation is the full prompt.

    Every assistant turn is supervised, so a multi-turn instance (instance-level mixing) trains on each
    answer; builders that want only some answers supervised mark the others `"train": False`.
    """
    segments: list[tuple[str, bool]] = []
    prompt = template.prefix
    if template.default_system and (not messages or messages[0]["role"] != "system"):
        prompt += template.system.format(content=template.default_system)
    for message in messages:
        role = message["role"]
        content = template.render_content(message["content"])
        if role == "system":
            prompt += template.system.format(content=content)
        elif role == "user":
            prompt += template.user.format(content=content)
        elif role == "assistant":
            prompt += template.assistant_header
            answer = template.assistant_answer.format(content=content)
            supervised = message.get("train", True)
            segments.append((prompt, False))
            segments.append((answer, supervised))
            prompt = template.assistant_suffix
        else:
            raise ValueError(f"unknown role {role!r} (expected system, user or assistant)")
    if prompt:
        segments.append((prompt, False))
    return [(text, supervised) for text, supervised in segments if text]
