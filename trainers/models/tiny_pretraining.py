"""A base-model stage for the tiny VLMs: teach the random-init model to read the synthetic cell images.

A random-init tower never learns to read glyphs in fixed cells through the LM (the loss plateaus at the
answer-level chance loss; see the engineering notes), so the paper recipes would have nothing to compare.
Real VLMs start from a pretrained vision encoder and an alignment stage; this module is the tiny analogue:
1. warm the vision tower up with a direct visual objective (classify the glyph of every cell),
2. freeze the tower and align projector + LM by reading the cells out in order ("captioning"), in exactly
   the chat format and batches fine-tuning uses, while the LM also learns to read facts given as text and
   answer questions about them in either language (a real VLM's language model arrives able to read text and
   knows several languages; without this the tiny LM answers text-centric prompts barely better than
   vision-centric ones, and no cross-lingual pair can be recognised).
`build_tiny_llava_base` / `build_tiny_qwen2_vl_base` are `model.init` builders, so `materialise_init` runs the
stage once and caches its result.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.data_builders.sample import image_part, make_sample, message, text_part
from xmodal.data_builders.sources import SyntheticFactsSource
from xmodal.core.tokens import IGNORE_INDEX
from xmodal.data_builders.tokenize import encode_view, load_rgb
from xmodal.trainers.models.finetuning import component_prefixes
from xmodal.trainers.models.tiny import build_tiny_llava, build_tiny_qwen2_vl

logger = logging.getLogger(__name__)


class PretrainingError(RuntimeError):
    """The stage did not teach the model to read the images; nothing should be cached."""


@dataclass(frozen=True)
class PretrainingSettings:
    seed: int = 0
    train_records: int = 3000
    held_out_records: int = 256
    classifier_steps: int = 300
    caption_steps: int = 300
    # Text-only key/value questions mixed into the captioning batches; each record's facts and question are in
    # one of the synthetic task's two languages each (the same or not: bilingual facts). 0 turns it off.
    text_qa_records: int = 0
    held_out_text_qa_records: int = 256
    batch_size: int = 32
    learning_rate: float = 1.0e-3
    # Below these the base cannot read its images, and every recipe built on it would measure noise.
    min_classifier_accuracy: float = 0.9
    min_caption_exact_match: float = 0.8
    min_text_qa_accuracy: float = 0.0
    caption_prompt: str = "What are the facts?"
    log_every: int = 50
    cache_dir: str | None = None  # where the synthetic source writes its images (None: its own default)


@dataclass(frozen=True)
class CellImages:
    """Rendered synthetic records with what the two objectives need."""

    records: list[dict]
    image_inputs: dict[str, torch.Tensor]  # the model's own image processor's output, indexable per image
    cell_labels: torch.Tensor  # [N, cells]: 0 = empty cell, 1 + value index otherwise
    num_classes: int  # the values, plus "empty"
    captions: list[str]  # the record's facts in cell order, as the synthetic source verbalises them


def build_tiny_llava_base(stage: dict | None = None, **model_args):
    """`build_tiny_llava(**model_args)`, then the base stage with `stage` as `PretrainingSettings` fields."""
    return _with_pretraining(build_tiny_llava, model_args, stage)


def build_tiny_qwen2_vl_base(stage: dict | None = None, **model_args):
    """`build_tiny_qwen2_vl(**model_args)`, then the base stage with `stage` as `PretrainingSettings` fields."""
    return _with_pretraining(build_tiny_qwen2_vl, model_args, stage)


def _with_pretraining(build, model_args: dict, stage: dict | None):
    arguments = inspect.signature(build).bind(**model_args)
    arguments.apply_defaults()
    model, processor = build(**model_args)
    image_size = arguments.arguments["vision"]["image_size"]
    pretrain(model, processor, image_size, PretrainingSettings(**(stage or {})))
    return model, processor


def pretrain(model, processor, image_size: int, settings: PretrainingSettings) -> dict:
    """Warm the tower up, then align by captioning; returns the held-out scores, raises PretrainingError if low."""
    started = time.perf_counter()
    # A private RNG stream: the stage is the same for a seed whatever ran before, and leaves the caller's be.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        train, held_out = render_cell_images(processor, image_size, settings)
        logger.info("tiny pretraining: %d training and %d held-out images", len(train.records), len(held_out.records))
        classifier_accuracy = warm_up_vision_tower(model, train, held_out, settings)
        scores = align_by_captioning(model, processor, train, held_out, settings)
    logger.info("tiny pretraining: done in %.0f s", time.perf_counter() - started)
    return {"classifier_accuracy": classifier_accuracy, **scores}


def render_cell_images(processor, image_size: int, settings: PretrainingSettings) -> tuple[CellImages, CellImages]:
    """Training and held-out records of the synthetic source; no held-out image also appears in training."""

    def source(name: str, num_records: int) -> SyntheticFactsSource:
        # Every number of facts, down to one, so empty cells are common enough to be learnt as a class.
        return SyntheticFactsSource(
            num_records=num_records,
            seed=settings.seed,
            num_facts=(1, 4),
            image_size=image_size,
            cache_dir=settings.cache_dir,
            name=name,
        )

    def image_content(record: dict) -> tuple:
        return tuple(sorted(record["meta"]["cells"].items()))

    train_source = source("base_stage_train", settings.train_records)
    train_records = train_source.records()
    seen = {image_content(r) for r in train_records}
    held_out_records = [
        r for r in source("base_stage_held_out", settings.held_out_records).records() if image_content(r) not in seen
    ]
    return _cell_images(train_records, train_source, processor), _cell_images(held_out_records, train_source, processor)


def text_qa_records(settings: PretrainingSettings) -> tuple[list[dict], list[dict]]:
    """Training and held-out text-only question records over every (facts, question) language pair, in turn.

    Held-out records are those whose facts and question never appear in training.
    """
    pairs = [(facts, question) for facts in ("en", "xx") for question in ("en", "xx")]

    def records(name: str, total: int) -> list[dict]:
        per_pair = [
            SyntheticFactsSource(
                num_records=-(-total // len(pairs)), seed=settings.seed, num_facts=(1, 4), facts_in="text",
                language=facts, question_language=question, second_language=question, name=name,
            ).records()
            for facts, question in pairs
        ]
        return [record for group in zip(*per_pair) for record in group][:total]

    def content(record: dict) -> tuple:
        return record["messages"][0]["content"][-1]["text"], record["target"]

    train = records("base_stage_text_train", settings.text_qa_records)
    seen = {content(record) for record in train}
    held_out = records("base_stage_text_held_out", settings.held_out_text_qa_records)
    return train, [record for record in held_out if content(record) not in seen]


def _cell_images(records: list[dict], source: SyntheticFactsSource, processor) -> CellImages:
    spec = source.languages[source.language]
    labels = [
        [1 + spec["values"].index(r["meta"]["cells"][key]) if key in r["meta"]["cells"] else 0 for key in spec["keys"]]
        for r in records
    ]
    images = [load_rgb(r["images"][0]) for r in records]
    image_inputs = dict(processor.image_processor(images=images, return_tensors="pt"))
    if "image_grid_thw" in image_inputs:  # Qwen2-VL: every image's patches in one [patches, dim] tensor
        pixel_values = image_inputs["pixel_values"]
        image_inputs["pixel_values"] = pixel_values.view(len(images), -1, pixel_values.shape[-1])
    return CellImages(
        records=records,
        image_inputs=image_inputs,
        cell_labels=torch.tensor(labels),
        num_classes=1 + len(spec["values"]),
        captions=[source.fact_separator.join(r["meta"]["facts"]) for r in records],
    )


def _select_images(images: CellImages, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The image inputs of the images at `index`, laid out as the model takes them."""
    inputs = {key: value[index] for key, value in images.image_inputs.items()}
    if "image_grid_thw" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].flatten(0, 1)
    return inputs


def projector_inputs(model, image_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """`[images, tokens, dim]`: the vision tower's features as the model hands them to its projector."""
    if model.config.model_type == "llava":  # the configured layer, CLS dropped under the "default" strategy
        tower = model.model.vision_tower(image_inputs["pixel_values"], output_hidden_states=True)
        features = tower.hidden_states[model.config.vision_feature_layer]
        return features[:, 1:] if model.config.vision_feature_select_strategy == "default" else features
    if model.config.model_type == "qwen2_vl":  # the blocks' output, before the patch merger (the projector)
        grid = image_inputs["image_grid_thw"]
        patches = model.model.visual(image_inputs["pixel_values"], grid_thw=grid).last_hidden_state
        return patches.view(len(grid), -1, patches.shape[-1])
    raise ValueError(f"tiny pretraining knows no vision tower of model_type {model.config.model_type!r}")


def vision_tower_parameters(model) -> list[nn.Parameter]:
    """The parameters fine-tuning's `freeze_vision_tower` means, so both stages agree on what the tower is."""
    prefixes = component_prefixes(model)["vision_tower"]
    return [parameter for name, parameter in model.named_parameters() if name.startswith(prefixes)]


def warm_up_vision_tower(model, train: CellImages, held_out: CellImages, settings: PretrainingSettings) -> float:
    """Train the tower + a throwaway linear head to classify every cell's glyph; returns held-out cell accuracy.

    The head reads all patch features at once (a per-cell pooling is one such linear map), so it needs no
    knowledge of where the renderer puts the cells, yet every patch feature must carry its own glyph part.
    """
    num_cells, num_classes = train.cell_labels.shape[1], train.num_classes
    with torch.no_grad():
        feature_shape = projector_inputs(model, _select_images(train, torch.tensor([0]))).shape[1:]
    head = nn.Linear(feature_shape.numel(), num_cells * num_classes)

    def cell_logits(images: CellImages, index: torch.Tensor) -> torch.Tensor:
        features = projector_inputs(model, _select_images(images, index))
        return head(features.flatten(1)).view(-1, num_cells, num_classes)

    optimizer = torch.optim.AdamW([*vision_tower_parameters(model), *head.parameters()], lr=settings.learning_rate)
    for step, batch in enumerate(_batches(len(train.records), settings.batch_size, settings.classifier_steps), 1):
        logits = cell_logits(train, batch)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), train.cell_labels[batch].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % settings.log_every == 0 or step == settings.classifier_steps:
            logger.info("tiny pretraining: warm-up %d/%d, cell loss %.4f", step, settings.classifier_steps, loss.item())
    with torch.no_grad():
        chunks = torch.arange(len(held_out.records)).split(settings.batch_size)
        predictions = torch.cat([cell_logits(held_out, chunk).argmax(-1) for chunk in chunks])
    accuracy = (predictions == held_out.cell_labels).float().mean().item()
    majority = (held_out.cell_labels == held_out.cell_labels.flatten().mode().values).float().mean().item()
    logger.info("tiny pretraining: held-out per-cell accuracy %.3f (majority class: %.3f)", accuracy, majority)
    if accuracy < settings.min_classifier_accuracy:
        raise PretrainingError(
            f"vision warm-up reached {accuracy:.3f} held-out per-cell accuracy, below min_classifier_accuracy="
            f"{settings.min_classifier_accuracy} after {settings.classifier_steps} steps: raise classifier_steps "
            "or train_records, or check the learning rate"
        )
    return accuracy


def align_by_captioning(
    model, processor, train: CellImages, held_out: CellImages, settings: PretrainingSettings
) -> dict[str, float]:
    """With the tower frozen, train projector + LM to read the cells out in order (and, with `text_qa_records`,
    to answer text-only questions); returns the held-out caption exact match and text QA accuracy.

    The warmed tower stays frozen (as LLaVA's stage 1 freezes CLIP): the early, noisy LM gradients would
    otherwise wreck it and the captions stay at chance.
    """
    collate = MultimodalCollator(processor)

    def encoded(samples: list[dict]) -> list[dict]:
        return [encode_view(s["messages"], s["images"], processor, f"base stage {s['id']!r}") for s in samples]

    def captions(images: CellImages) -> list[dict]:
        pairs = zip(images.records, images.captions)
        return [_caption_sample(record, caption, settings.caption_prompt) for record, caption in pairs]

    text_train, text_held_out = text_qa_records(settings)
    train_rows = encoded(captions(train) + text_train)
    held_out_rows, text_held_out_rows = encoded(captions(held_out)), encoded(text_held_out)
    tower = vision_tower_parameters(model)
    for parameter in tower:
        parameter.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    model.train()
    for step, batch in enumerate(_batches(len(train_rows), settings.batch_size, settings.caption_steps), 1):
        loss = model(**collate([train_rows[i] for i in batch.tolist()])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % settings.log_every == 0 or step == settings.caption_steps:
            logger.info("tiny pretraining: captioning %d/%d, lm loss %.4f", step, settings.caption_steps, loss.item())
    model.eval()
    for parameter in tower:  # hand back an ordinary model: fine-tuning settings decide what is frozen
        parameter.requires_grad_(True)
    scores = {
        "caption_exact_match": _held_out_exact_match(model, collate, held_out_rows, settings.batch_size),
        "text_qa_accuracy": _held_out_exact_match(model, collate, text_held_out_rows, settings.batch_size),
    }
    logger.info("tiny pretraining: held-out caption exact match %.3f, text QA accuracy %.3f", *scores.values())
    minimums = {"caption_exact_match": "min_caption_exact_match", "text_qa_accuracy": "min_text_qa_accuracy"}
    for score, minimum in minimums.items():
        if scores[score] < getattr(settings, minimum):
            raise PretrainingError(
                f"the base stage reached {scores[score]:.3f} held-out {score}, below {minimum}="
                f"{getattr(settings, minimum)} after {settings.caption_steps} caption_steps: raise caption_steps"
            )
    return scores


def _held_out_exact_match(model, collate, rows: list[dict], batch_size: int) -> float:
    """Share of rows whose answer greedy decoding reproduces exactly (nan for no rows)."""
    exact: list[bool] = []
    for start in range(0, len(rows), batch_size):
        exact += _teacher_forced_exact(model, collate(rows[start : start + batch_size]))
    return sum(exact) / len(exact) if exact else float("nan")


def _caption_sample(record: dict, caption: str, prompt: str) -> dict:
    messages = [message("user", [image_part(), text_part(prompt)]), message("assistant", [text_part(caption)])]
    return make_sample(f"{record['id']}/caption", record["source"], messages, record["images"], condition="caption")


@torch.no_grad()
def _teacher_forced_exact(model, batch: dict) -> list[bool]:
    """Per row: does every answer token (end of turn included) get the top logit?

    That is exactly "greedy decoding reproduces the answer", in one forward instead of a generation loop.
    """
    labels = batch.pop("labels")[:, 1:]
    predicted = model(**batch).logits[:, :-1].argmax(-1)
    supervised = labels != IGNORE_INDEX
    return ((predicted == labels) | ~supervised).all(dim=1).tolist()


def _batches(num_rows: int, batch_size: int, steps: int):
    """`steps` index batches from shuffled epochs (drawn from the global RNG, which the stage seeds)."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(num_rows)])
        batch, order = order[:batch_size], order[batch_size:]
        yield batch
