"""Held-out instances -> prompts -> generated answers -> per-item scores.

Each instance is prompted with everything up to its last assistant turn through the model's own chat template
(`add_generation_prompt=True`), which is token for token the prompt the model was trained
on (`Prediction.prompt_matches_training` says where it is not). A paired instance with a `teacher` view is
answered as two items (its own condition and the teacher's), on the same record.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch

from xmodal.data_builders.sample import prompt_messages
from xmodal.core.console import progress_bar
from xmodal.core.scoring import GRADERS, cut_at_end, grader
from xmodal.core.tokens import IGNORE_INDEX
from xmodal.data_builders.tokenize import encode_view, load_rgb
from xmodal.trainers.models import to_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalItem:
    """One prompt to answer: an instance, or the teacher view of a paired one."""

    id: str
    condition: str
    messages: list  # the whole conversation; the last assistant turn is the reference answer
    images: list
    target: str
    record: str = ""  # the source record: the unit the bootstrap resamples (both views of a pair share it)
    meta: dict = field(default_factory=dict)  # the instance's meta (a conflict's `conflict`, `answer`, ...)

    @property
    def is_conflict_probe(self) -> bool:
        """Whether the item is a conflict or control instance of `builder=conflict`."""
        return "conflict" in self.meta


@dataclass
class Prediction:
    item: EvalItem
    prompt: str
    answers: list[str]  # one per sample
    correct: list[bool]
    said_conflict: list[bool] | None  # per sample, for conflict and control items (the judge's verdict)
    prompt_matches_training: bool

    @property
    def score(self) -> float:
        """Accuracy averaged over the samples."""
        return sum(self.correct) / len(self.correct)


# New tokens an answer may take, by the data's prompt style: a short answer, or step-by-step reasoning then a boxed
# answer (data.prompt_style=paper; the modality-gap paper allows 4,096).
MAX_NEW_TOKENS = {"compact": 16, "paper": 4096, "release_eval": 4096}


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated and scored. `temperature` 0 is greedy decoding (then `num_samples` must be 1);
    above 0 each prompt gets `num_samples` sampled answers (`top_p` nucleus), seeded by `seed`."""

    batch_size: int = 16
    max_new_tokens: int = 16
    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    tolerance: float = 0.01  # lenient grader: relative error a numeric answer may have (xmodal.core.scoring)
    grader: str = "lenient"  # lenient | release (paper 2's released evaluation; xmodal.core.scoring.grader)
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.num_samples < 1:
            raise ValueError("batch_size, max_new_tokens and num_samples must be positive")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.grader not in GRADERS:
            raise ValueError(f"evaluate.grader must be one of {GRADERS}, got {self.grader!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.temperature == 0 and self.num_samples > 1:
            raise ValueError(
                f"num_samples={self.num_samples} with temperature 0: greedy decoding gives one answer; "
                "set a temperature (the modality-gap paper samples at 0.6) or num_samples=1"
            )

    @classmethod
    def from_config(cls, settings, prompt_style: str = "compact") -> GenerationSettings:
        """The fields of this class found in a config node (other keys, e.g. checkpoints, are not generation's);
        `max_new_tokens` null (or absent) = `MAX_NEW_TOKENS[prompt_style]`."""
        fields = {name: settings[name] for name in cls.__dataclass_fields__ if settings.get(name) is not None}
        if "max_new_tokens" not in fields:
            if prompt_style not in MAX_NEW_TOKENS:
                raise ValueError(f"no default max_new_tokens for prompt style {prompt_style!r}; set it explicitly")
            fields["max_new_tokens"] = MAX_NEW_TOKENS[prompt_style]
        return cls(**fields)


# --- instances and prompts ---------------------------------------------------------------------------------------


def eval_items(instances: list[dict], per_condition: int | None = None) -> list[EvalItem]:
    """Every item (`per_condition` None), or the first `per_condition` of each condition, in build order
    (deterministic: the build is seeded)."""
    items: list[EvalItem] = []
    taken: dict[str, int] = defaultdict(int)
    for instance in instances:
        meta = instance.get("meta") or {}
        record = str(meta.get("pair_id") or meta.get("record_id") or instance["id"])
        views = [(instance["id"], instance)]
        if instance.get("teacher"):
            teacher = instance["teacher"]
            views.append((f"{meta.get('pair_id', instance['id'])}:{teacher['condition']}", teacher))
        for item_id, view in views:
            condition = view.get("condition", "default")
            if per_condition is None or taken[condition] < per_condition:
                taken[condition] += 1
                items.append(
                    EvalItem(item_id, condition, view["messages"], view.get("images", []), instance["target"], record, meta)
                )
    return items


def generation_prompt(item: EvalItem, processor) -> str:
    return processor.apply_chat_template(prompt_messages(item.messages), add_generation_prompt=True, tokenize=False)


def training_prompt_ids(item: EvalItem, processor) -> list[int]:
    """The tokens training puts before the last answer: the encoded conversation up to its last supervised run."""
    encoded = encode_view(item.messages, item.images, processor, f"instance {item.id!r}")
    labels = encoded["labels"]
    start = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return encoded["input_ids"][:start]


def prompt_inputs(prompts: list[str], items: list[EvalItem], processor) -> dict:
    """Left-padded model inputs (generation appends to the right end of every row)."""
    # Images per prompt (some processors, Gemma 3's, need to know which prompt has none).
    images = [[load_rgb(path) for path in item.images] for item in items]
    return processor(
        text=prompts, images=images if any(images) else None, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"
    )


# --- generation --------------------------------------------------------------------------------------------------


def end_markers(processor, model) -> tuple[str, ...]:
    """Token strings that end an answer: the tokenizer's and the generation config's end tokens, and padding."""
    tokenizer = processor.tokenizer
    eos_ids = model.generation_config.eos_token_id
    eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]
    eos_tokens = tokenizer.convert_ids_to_tokens([i for i in eos_ids if i is not None])
    tokens = {tokenizer.eos_token, tokenizer.pad_token, *eos_tokens}
    return tuple(sorted(token for token in tokens if token))


def _decoding(settings: GenerationSettings) -> dict:
    if settings.temperature == 0:
        # Explicit Nones: a checkpoint's generation_config may carry sampling defaults (Qwen's does).
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {
        "do_sample": True,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": None,
        "num_return_sequences": settings.num_samples,
    }


def answer_batch(model, processor, items: list[EvalItem], settings: GenerationSettings):
    """(prompts, prompt token ids per item, `num_samples` answers per item) of one batch, answers cut at the end
    token."""
    prompts = [generation_prompt(item, processor) for item in items]
    inputs = to_model(prompt_inputs(prompts, items, processor), model)
    with torch.no_grad():
        generated = model.generate(
            **inputs,
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=processor.tokenizer.pad_token_id,
            **_decoding(settings),
        )
    markers = end_markers(processor, model)
    decoded = processor.tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1] :])
    answers = [cut_at_end(text, markers).strip() for text in decoded]
    samples = settings.num_samples
    prompt_ids = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    return prompts, prompt_ids, [answers[row * samples : (row + 1) * samples] for row in range(len(items))]


def score_item(
    item: EvalItem, prompt: str, answers: list[str], prompt_matches: bool, settings: GenerationSettings,
    judge: Callable | None,
) -> Prediction:
    """A Prediction: each answer matched against the target; conflict items also put to the judge."""
    correct_answer = grader(settings.grader, "evaluate", settings.tolerance)
    correct = [correct_answer(answer, item.target) for answer in answers]
    said_conflict = None
    if judge is not None and item.is_conflict_probe:
        meta = item.meta
        said_conflict = [bool(judge(answer, meta.get("answer"), meta.get("counter_answer"))) for answer in answers]
    return Prediction(item, prompt, answers, correct, said_conflict, prompt_matches)


def predict(
    model,
    processor,
    items: list[EvalItem],
    settings: GenerationSettings,
    judge: Callable | None = None,
    batches: list[int] | None = None,
    progress: str | None = None,
) -> list[Prediction]:
    """Answers to `items`, `settings.batch_size` prompts at a time (only the batch numbers in `batches`, when given:
    a rank's share in distributed evaluation). Sampling is seeded and leaves the caller's random state untouched.
    `progress`: the description of a progress bar over the batches (none without one)."""
    warn_of_unreachable_targets(items, processor.tokenizer, settings.max_new_tokens)
    starts = list(range(0, len(items), settings.batch_size))
    chosen = starts if batches is None else [starts[number] for number in batches]
    device = next(model.parameters()).device
    predictions = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        for start in chosen if progress is None else progress_bar(chosen, progress):
            batch = items[start : start + settings.batch_size]
            prompts, prompt_ids, answers = answer_batch(model, processor, batch, settings)
            for item, prompt, ids, item_answers in zip(batch, prompts, prompt_ids, answers):
                matches = ids == training_prompt_ids(item, processor)
                predictions.append(score_item(item, prompt, item_answers, matches, settings, judge))
    return predictions


def warn_of_unreachable_targets(items: list[EvalItem], tokenizer, max_new_tokens: int) -> None:
    """Log how many targets take more than `max_new_tokens` tokens: an answer cut there cannot reproduce them
    whole, so where only an exact match counts (a conflict answer with `conflict_reading`, for one) those items
    score wrong whatever the model learnt."""
    unreachable = [(length, item.id) for item in items
                   if (length := len(tokenizer(item.target, add_special_tokens=False).input_ids)) > max_new_tokens]
    if unreachable:
        length, item_id = max(unreachable)
        logger.warning(
            "%d of %d targets take more than max_new_tokens=%d tokens (the longest, item %r, takes %d): answers "
            "cut there cannot reproduce them; raise evaluate.max_new_tokens (xmodal-eval) or "
            "metrics.eval.max_new_tokens (training)", len(unreachable), len(items), max_new_tokens, item_id, length,
        )


def batch_count(items: list[EvalItem], settings: GenerationSettings) -> int:
    return -(-len(items) // settings.batch_size)
