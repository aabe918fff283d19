"""Tiny offline twins of the supported architectures: random-init models built from configs, with tokenizers,
processors and chat templates written here (no hub). Each keeps its family's model class, vision tower, projector,
image-token expansion and chat format, at a few hundred thousand parameters.

Builders share one signature: `text` (hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads) and
`vision` (image_size, patch_size, hidden_size, intermediate_size, num_layers, num_heads) dicts, `vocab_size`,
`dtype`, `attn_implementation`; they return `(model, processor)`.
"""

from __future__ import annotations

import inspect
import json
import os

import tokenizers
import torch
from transformers import (
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    GotOcr2ImageProcessorPil,
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    InternVLConfig,
    InternVLProcessor,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLProcessor,
)
from transformers.processing_utils import ProcessorMixin

# The tiny tokenizers are byte-level BPE (any text encodes) whose merges are learnt from this corpus, so
# the chat markers and the words of the built-in tasks become short token sequences.
_TOKENIZER_CORPUS = """
A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT: system user assistant
What is the value of the key? Answer with the value only. The answer is yes no true false unknown
Facts: key value colour color shape size number name city animal fruit country river mountain planet
red green blue yellow black white orange purple brown grey pink circle square triangle star heart
Do the sources agree or disagree? The sources conflict. The sources agree. Evidence: Question: Answer:
Find the angle line point circle radius diameter length area perimeter segment triangle degrees
lies on line the center of is perpendicular parallel to equal bisects tangent chord arc
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 A B C D E F G H I J K L M N O P Q R S T U V W X Y Z
a b c d e f g h i j k l m n o p q r s t u v w x y z . , ; : ? ! ( ) [ ] = + - * / \\ ^ _ { } < > | ' "
"""


def build_offline_tokenizer(special_tokens: list[str], vocab_size: int, **named_tokens) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE tokenizer in memory; `named_tokens` maps roles to special tokens."""
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([_TOKENIZER_CORPUS] * 4, trainer)
    standard_roles = {"pad_token", "bos_token", "eos_token", "unk_token"}
    standard = {k: v for k, v in named_tokens.items() if k in standard_roles}
    extra = {k: v for k, v in named_tokens.items() if k not in standard_roles}
    return PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens=extra, **standard)



def chat_template(
    roles: dict[str, tuple[str, str]], image: str, bos: str = "", answer_prefix: str = "", default_system: str | None = None
) -> str:
    """A jinja chat template of the common shape: `bos`, then each turn as `open + content + close` of its role
    (`roles`: system, user, assistant); the generation prompt is the assistant's `open`, and an answer starts with
    `answer_prefix` after it. An image content part is written as `image`, the text its processor expands."""

    def literal(text: str) -> str:
        return json.dumps(text)  # a JSON string is a valid jinja string literal

    role_open = "{" + ", ".join(f"{literal(role)}: {literal(pair[0])}" for role, pair in roles.items()) + "}"
    role_close = "{" + ", ".join(f"{literal(role)}: {literal(pair[1])}" for role, pair in roles.items()) + "}"
    default = (
        "{% if messages and messages[0]['role'] != 'system' %}"
        f"{{{{ {literal(roles['system'][0] + default_system + roles['system'][1])} }}}}{{% endif %}}"
        if default_system
        else ""
    )
    return (
        f"{{% set opens = {role_open} %}}{{% set closes = {role_close} %}}{{{{ {literal(bos)} }}}}{default}"
        "{% for message in messages %}{{ opens[message['role']] }}"
        f"{{% if message['role'] == 'assistant' %}}{{{{ {literal(answer_prefix)} }}}}{{% endif %}}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{{{{ {literal(image)} }}}}{{% else %}}{{{{ part['text'] }}}}{{% endif %}}"
        "{% endfor %}{% endif %}{{ closes[message['role']] }}{% endfor %}"
        "{% if add_generation_prompt %}{{ opens['assistant'] }}{% endif %}"
    )


# Each twin's chat format, after its family's released checkpoints (system turns simplified where the family folds
# them into the first user turn).
_VICUNA = dict(
    roles={"system": ("", " "), "user": ("USER: ", " "), "assistant": ("ASSISTANT:", "</s>")},
    image="<image>\n", bos="<s>", answer_prefix=" ",
)
_CHATML_ROLES = {role: (f"<|im_start|>{role}\n", "<|im_end|>\n") for role in ("system", "user", "assistant")}
_QWEN_VISION = "<|vision_start|><|image_pad|><|vision_end|>"
# Qwen2-VL's and Qwen2.5-VL's templates open with this system turn when a conversation has none; Qwen3-VL's do not.
QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."
_IDEFICS3 = dict(
    roles={
        "system": ("System:", "<end_of_utterance>\n"),
        "user": ("User:", "<end_of_utterance>\n"),
        "assistant": ("Assistant:", "<end_of_utterance>\n"),
    },
    image="<image>", bos="<|begin_of_text|>", answer_prefix=" ",
)
_GEMMA3 = dict(
    roles={
        "system": ("<start_of_turn>system\n", "<end_of_turn>\n"),
        "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
        "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n"),
    },
    image="<start_of_image>", bos="<bos>",
)



def _text_fields(text: dict, tokenizer, **overrides) -> dict:
    """A decoder config's fields from the `text` sizes and the tokenizer's special tokens (untied output head)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": text["hidden_size"],
        "intermediate_size": text["intermediate_size"],
        "num_hidden_layers": text["num_layers"],
        "num_attention_heads": text["num_heads"],
        "num_key_value_heads": text["num_kv_heads"],
        "max_position_embeddings": text.get("max_position_embeddings", 2048),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
        **overrides,
    }


def _vision_fields(vision: dict) -> dict:
    """A ViT config's fields (CLIP, SigLIP, InternViT name them alike) from the `vision` sizes."""
    return {
        "image_size": vision["image_size"],
        "patch_size": vision["patch_size"],
        "hidden_size": vision["hidden_size"],
        "intermediate_size": vision["intermediate_size"],
        "num_hidden_layers": vision["num_layers"],
        "num_attention_heads": vision["num_heads"],
    }


def _vicuna_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    return build_offline_tokenizer(
        ["<pad>", "<s>", "</s>", "<unk>", "<image>"], vocab_size,
        pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", image_token="<image>",
    )


def build_tiny_llava(
    text: dict,
    vision: dict,
    vocab_size: int = 1024,
    vision_feature_select_strategy: str = "default",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
):
    """A random-init `LlavaForConditionalGeneration` (CLIP tower + Llama LM) and its `LlavaProcessor`."""
    tokenizer = _vicuna_tokenizer(vocab_size)
    image_size = vision["image_size"]
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS token; "default" strategy drops it, "full" keeps it
        chat_template=chat_template(**_VICUNA),
    )
    config = LlavaConfig(
        text_config=LlamaConfig(**_text_fields(text, tokenizer)),
        vision_config=CLIPVisionConfig(**_vision_fields(vision)),
        image_token_index=tokenizer.image_token_id,
        vision_feature_select_strategy=vision_feature_select_strategy,
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _instantiate(config, dtype, attn_implementation), processor


def build_tiny_llava_next(
    text: dict, vision: dict, vocab_size: int = 1024, dtype: str = "float32", attn_implementation: str = "sdpa"
):
    """A random-init `LlavaNextForConditionalGeneration`: any-resolution tiling (a base view plus tiles on the best
    grid pinpoint, one newline embedding per row) over a CLIP tower and Llama LM."""
    tokenizer = _vicuna_tokenizer(vocab_size)
    side = vision["image_size"]
    pinpoints = [[side, side], [side, 2 * side], [2 * side, side]]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template(**_VICUNA),
    )
    config = LlavaNextConfig(
        text_config=LlamaConfig(**_text_fields(text, tokenizer)),
        vision_config=CLIPVisionConfig(**_vision_fields(vision)),
        image_token_index=tokenizer.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        image_seq_length=(side // vision["patch_size"]) ** 2,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _instantiate(config, dtype, attn_implementation), processor


class _WithoutVideo:
    """A processor of a family that also reads videos, without its video processor.

    transformers 5.x cannot build a Qwen2-VL, Qwen2.5-VL, Qwen3-VL or InternVL processor (nor load one with
    `AutoProcessor`) unless torchvision is installed, because the video processor requires it, and torchvision
    has no CPU build on every platform. Images need no video processor, so these classes accept none; checkpoints
    are saved under the upstream class name and reload with `AutoProcessor` wherever torchvision exists.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)

    def save_pretrained(self, save_directory, *args, **kwargs):
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        config_path = os.path.join(save_directory, "processor_config.json")
        with open(config_path) as f:
            config = json.load(f)
        upstream = upstream_class(type(self))
        config["processor_class"] = upstream.__name__
        # The upstream processor's own settings (e.g. InternVL's image_seq_length), which transformers saves by
        # the signature of the class's __init__: this class's hides them.
        for name, parameter in inspect.signature(upstream.__init__).parameters.items():
            if parameter.default is not inspect.Parameter.empty and name not in SUB_PROCESSORS and hasattr(self, name):
                config.setdefault(name, getattr(self, name))
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)
        return saved


# Processor __init__ arguments that are saved as files of their own, not as processor settings.
SUB_PROCESSORS = ("image_processor", "tokenizer", "video_processor", "chat_template")


def upstream_class(image_only_class: type) -> type:
    return next(c for c in image_only_class.__mro__ if c.__module__.startswith("transformers."))


class ImageOnlyQwen2VLProcessor(_WithoutVideo, Qwen2VLProcessor):
    """`Qwen2VLProcessor` without its video processor (see `_WithoutVideo`)."""


class ImageOnlyQwen2_5_VLProcessor(_WithoutVideo, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without its video processor (see `_WithoutVideo`)."""


class ImageOnlyQwen3VLProcessor(_WithoutVideo, Qwen3VLProcessor):
    """`Qwen3VLProcessor` without its video processor (see `_WithoutVideo`)."""


class ImageOnlyInternVLProcessor(_WithoutVideo, InternVLProcessor):
    """`InternVLProcessor` without its video processor (see `_WithoutVideo`)."""


# The image-only stand-in of each upstream processor class, by the name a checkpoint's processor_config holds.
IMAGE_ONLY_PROCESSORS = {
    upstream_class(cls).__name__: cls
    for cls in (ImageOnlyQwen2VLProcessor, ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen3VLProcessor, ImageOnlyInternVLProcessor)
}


def _qwen_vl(processor_class, text: dict, vision: dict, vocab_size: int, default_system: str | None):
    """(tokenizer, processor, M-RoPE section, token ids) shared by the Qwen-VL twins."""
    tokenizer = build_offline_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
        vocab_size,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        image_token="<|image_pad|>",
        video_token="<|video_pad|>",
        vision_bos_token="<|vision_start|>",
        vision_eos_token="<|vision_end|>",
    )
    side = vision["image_size"]
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=side * side,
        max_pixels=side * side,
        patch_size=vision["patch_size"],
        temporal_patch_size=2,
        merge_size=vision.get("spatial_merge_size", 2),
    )
    template = chat_template(_CHATML_ROLES, _QWEN_VISION, default_system=default_system)
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    head_dim = text["hidden_size"] // text["num_heads"]
    # M-RoPE splits the rotary half-dimension into (temporal, height, width) sections.
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    ids = dict(
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    text_config = _text_fields(text, tokenizer, bos_token_id=tokenizer.pad_token_id)
    return processor, mrope_section, ids, text_config


def build_tiny_qwen2_vl(
    text: dict, vision: dict, vocab_size: int = 1024, dtype: str = "float32", attn_implementation: str = "sdpa"
):
    """A random-init `Qwen2VLForConditionalGeneration` (GQA, M-RoPE) and its image processor + tokenizer."""
    processor, mrope_section, ids, text_config = _qwen_vl(
        ImageOnlyQwen2VLProcessor, text, vision, vocab_size, QWEN2_DEFAULT_SYSTEM
    )
    config = Qwen2VLConfig(
        text_config={**text_config, "rope_scaling": {"type": "mrope", "mrope_section": mrope_section}},
        vision_config=dict(
            depth=vision["num_layers"],
            embed_dim=vision["hidden_size"],
            hidden_size=text["hidden_size"],
            num_heads=vision["num_heads"],
            mlp_ratio=vision["intermediate_size"] // vision["hidden_size"],
            patch_size=vision["patch_size"],
            spatial_merge_size=vision.get("spatial_merge_size", 2),
            temporal_patch_size=2,
            in_channels=3,
        ),
        tie_word_embeddings=False,
        **ids,
    )
    return _instantiate(config, dtype, attn_implementation), processor


def _merging_vit(text: dict, vision: dict, **extra) -> dict:
    """The vision config of Qwen2.5-VL and Qwen3-VL: a ViT whose patch merger projects into the LM's width."""
    return dict(
        depth=vision["num_layers"],
        hidden_size=vision["hidden_size"],
        intermediate_size=vision["intermediate_size"],
        num_heads=vision["num_heads"],
        out_hidden_size=text["hidden_size"],
        patch_size=vision["patch_size"],
        spatial_merge_size=vision.get("spatial_merge_size", 2),
        temporal_patch_size=2,
        **extra,
    )


def build_tiny_qwen2_5_vl(
    text: dict, vision: dict, vocab_size: int = 1024, dtype: str = "float32", attn_implementation: str = "sdpa"
):
    """A random-init `Qwen2_5_VLForConditionalGeneration`: windowed-attention ViT (the last block full attention),
    SwiGLU vision MLPs, M-RoPE LM; the papers' architecture."""
    processor, mrope_section, ids, text_config = _qwen_vl(
        ImageOnlyQwen2_5_VLProcessor, text, vision, vocab_size, QWEN2_DEFAULT_SYSTEM
    )
    config = Qwen2_5_VLConfig(
        text_config={**text_config, "rope_parameters": {"rope_type": "default", "mrope_section": mrope_section}},
        vision_config=_merging_vit(
            text,
            vision,
            # One window of merged patches per tiny image half, so windowed and full attention both run.
            window_size=vision["patch_size"] * vision.get("spatial_merge_size", 2) * 2,
            fullatt_block_indexes=[vision["num_layers"] - 1],
        ),
        tie_word_embeddings=False,
        **ids,
    )
    return _instantiate(config, dtype, attn_implementation), processor


def build_tiny_qwen3_vl(
    text: dict, vision: dict, vocab_size: int = 1024, dtype: str = "float32", attn_implementation: str = "sdpa"
):
    """A random-init `Qwen3VLForConditionalGeneration`: ViT with learnt position embeddings and DeepStack (early
    vision layers' features added into the first LM layers), interleaved M-RoPE, QK-norm LM."""
    processor, mrope_section, ids, text_config = _qwen_vl(ImageOnlyQwen3VLProcessor, text, vision, vocab_size, None)
    head_dim = text["hidden_size"] // text["num_heads"]
    config = Qwen3VLConfig(
        text_config={
            **text_config,
            "head_dim": head_dim,
            "rope_parameters": {"rope_type": "default", "mrope_section": mrope_section, "mrope_interleaved": True},
        },
        vision_config=_merging_vit(
            text,
            vision,
            num_position_embeddings=(vision["image_size"] // vision["patch_size"]) ** 2,
            deepstack_visual_indexes=[0],
        ),
        tie_word_embeddings=False,
        **ids,
    )
    return _instantiate(config, dtype, attn_implementation), processor


def build_tiny_idefics3(
    text: dict, vision: dict, vocab_size: int = 1024, dtype: str = "float32", attn_implementation: str = "sdpa"
):
    """A random-init `Idefics3ForConditionalGeneration` (SigLIP-style tower, pixel-shuffle connector, Llama LM);
    one global image view (no splitting: tiny images)."""
    tokenizer = build_offline_tokenizer(
        ["<|end_of_text|>", "<|begin_of_text|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
         "<global-img>"],
        vocab_size,
        pad_token="<|end_of_text|>", bos_token="<|begin_of_text|>", eos_token="<end_of_utterance>",
    )
    side, scale = vision["image_size"], 2
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            size={"longest_edge": side}, max_image_size={"longest_edge": side}, do_image_splitting=False
        ),
        tokenizer=tokenizer,
        image_seq_len=(side // vision["patch_size"]) ** 2 // scale**2,
        chat_template=chat_template(**_IDEFICS3),
    )
    config = Idefics3Config(
        text_config=LlamaConfig(**_text_fields(text, tokenizer)),
        vision_config=_vision_fields(vision),
        scale_factor=scale,
        image_token_id=processor.image_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return _instantiate(config, dtype, attn_implementation), processor


def build_tiny_gemma3(
    text: dict, vision: dict, vocab_size: int = 1024, dtype: str = "float32", attn_implementation: str = "sdpa"
):
    """A random-init `Gemma3ForConditionalGeneration`: SigLIP tower, average-pooled soft tokens, Gemma 3 LM with
    interleaved sliding-window layers and bidirectional attention inside an image."""
    tokenizer = build_offline_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
         "<image_soft_token>"],
        vocab_size,
        pad_token="<pad>", bos_token="<bos>", eos_token="<end_of_turn>", unk_token="<unk>",
        boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>",
    )
    side = vision["image_size"]
    tokens_per_image = ((side // vision["patch_size"]) // 2) ** 2  # 2x2 average pooling of the patch grid
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": side, "width": side}),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_image,
        chat_template=chat_template(**_GEMMA3),
    )
    head_dim = text["hidden_size"] // text["num_heads"]
    config = Gemma3Config(
        text_config=_text_fields(text, tokenizer, head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=64),
        vision_config={"model_type": "siglip_vision_model", **_vision_fields(vision)},
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=False,
    )
    model = _instantiate(config, dtype, attn_implementation)
    # transformers initialises Gemma 3's image projection at zero (a trained checkpoint's never is): the tower would
    # get no gradient until the projector has moved.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=config.text_config.initializer_range)
    return model, processor


def build_tiny_internvl(
    text: dict, vision: dict, vocab_size: int = 1024, dtype: str = "float32", attn_implementation: str = "sdpa"
):
    """A random-init `InternVLForConditionalGeneration`: InternViT tower, pixel-shuffle + MLP projector, Qwen2 LM;
    one image tile (no dynamic tiling: tiny images)."""
    tokenizer = build_offline_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        vocab_size,
        pad_token="<|endoftext|>", eos_token="<|im_end|>",
        start_image_token="<img>", end_image_token="</img>", context_image_token="<IMG_CONTEXT>", video_token="<video>",
    )
    side, patch, downsample = vision["image_size"], vision["patch_size"], 0.5
    image_tokens = int((side // patch) ** 2 * downsample**2)
    processor = ImageOnlyInternVLProcessor(
        image_processor=GotOcr2ImageProcessorPil(size={"height": side, "width": side}, crop_to_patches=False),
        tokenizer=tokenizer,
        image_seq_length=image_tokens,
        chat_template=chat_template(_CHATML_ROLES, "<IMG_CONTEXT>\n"),
    )
    config = InternVLConfig(
        text_config={"model_type": "qwen2", **_text_fields(text, tokenizer, bos_token_id=tokenizer.pad_token_id)},
        vision_config={**_vision_fields(vision), "image_size": [side, side], "patch_size": [patch, patch]},
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=downsample,
        vision_feature_layer=-1,
        image_seq_length=image_tokens,
        tie_word_embeddings=False,
    )
    return _instantiate(config, dtype, attn_implementation), processor


def _instantiate(model_config, dtype: str, attn_implementation: str):
    return AutoModelForImageTextToText.from_config(
        model_config, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
    )
