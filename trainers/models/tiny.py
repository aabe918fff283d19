"""Tiny LLaVA and Qwen2-VL models with offline tokenizers and processors, built from configs (no hub)."""

from __future__ import annotations

import json
import os

import tokenizers
from transformers import (
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.processing_utils import ProcessorMixin

from xmodal.data_builders.templates import get_template

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


def build_tiny_llava(
    text: dict,
    vision: dict,
    vocab_size: int = 1024,
    vision_feature_select_strategy: str = "default",
    template: str = "llava",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
):
    """A random-init `LlavaForConditionalGeneration` (CLIP tower + Llama LM) and its `LlavaProcessor`."""
    tokenizer = build_offline_tokenizer(
        ["<pad>", "<s>", "</s>", "<unk>", "<image>"],
        vocab_size,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        image_token="<image>",
    )
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
        chat_template=get_template(template).jinja,
    )
    config = LlavaConfig(
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_layers"],
            num_attention_heads=text["num_heads"],
            num_key_value_heads=text["num_kv_heads"],
            max_position_embeddings=text.get("max_position_embeddings", 2048),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=CLIPVisionConfig(
            image_size=image_size,
            patch_size=vision["patch_size"],
            hidden_size=vision["hidden_size"],
            intermediate_size=vision["intermediate_size"],
            num_hidden_layers=vision["num_layers"],
            num_attention_heads=vision["num_heads"],
        ),
        image_token_index=tokenizer.image_token_id,
        vision_feature_select_strategy=vision_feature_select_strategy,
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.text_config.tie_word_embeddings = False
    return _instantiate(config, dtype, attn_implementation), processor


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without its video processor.

    transformers 5.x cannot build a Qwen2-VL processor (nor load one with `AutoProcessor`) unless
    torchvision is installed, because the video processor requires it, and torchvision has no CPU build
    on every platform. Images need no video processor, so this class drops it; checkpoints are saved
    under the upstream class name and reload with `AutoProcessor` wherever torchvision exists.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.video_processor = None

    def save_pretrained(self, save_directory, *args, **kwargs):
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        config_path = os.path.join(save_directory, "processor_config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["processor_class"] = Qwen2VLProcessor.__name__
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)
        return saved


def build_tiny_qwen2_vl(
    text: dict,
    vision: dict,
    vocab_size: int = 1024,
    template: str = "qwen2",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
):
    """A random-init `Qwen2VLForConditionalGeneration` (GQA, M-RoPE) and its image processor + tokenizer."""
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
    processor = ImageOnlyQwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=get_template(template).jinja
    )
    head_dim = text["hidden_size"] // text["num_heads"]
    # M-RoPE splits the rotary half-dimension into (temporal, height, width) sections.
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_layers"],
            num_attention_heads=text["num_heads"],
            num_key_value_heads=text["num_kv_heads"],
            max_position_embeddings=text.get("max_position_embeddings", 2048),
            rope_scaling={"type": "mrope", "mrope_section": mrope_section},
            bos_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        ),
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
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    return _instantiate(config, dtype, attn_implementation), processor


def _instantiate(model_config, dtype: str, attn_implementation: str):
    import torch

    return AutoModelForImageTextToText.from_config(
        model_config, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
    )
