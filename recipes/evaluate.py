"""xmodal-eval: greedy answers of checkpoints per instance condition -> eval.json, predictions.jsonl, results.md.

`xmodal-eval [overrides]` composes `conf/evaluate.yaml` (the root config plus an `evaluate` node), so model, data,
builder and encoding mean what they mean for `xmodal-train`, e.g. the modality gap of two runs on held-out records:

    xmodal-eval builder=paired data.seed=7 evaluate.checkpoints=[runs/text/final,runs/mix/final]

Each instance is prompted with everything up to its last assistant turn through the checkpoint's own chat template
(`add_generation_prompt=True`), which for the shipped templates is token for token the prompt the model was trained
on; instances where it is not are counted per condition (`prompt_mismatches`) and logged. A paired instance with a
`teacher` view is evaluated as two conditions (its own and the teacher's), on the same records.

Scoring: normalised exact match (`normalise_answer`): the text is cut at the first end-of-turn token, whitespace
runs are collapsed, case is folded, and trailing periods and spaces are dropped; it must then equal the normalised
`target`. Derived metrics: `modality_gap` = acc(text_centric) - acc(vision_centric) (paper 2); with the conflict
builder, per condition `conflict_recognition/<c>` (share of conflict instances answered with the builder's
`target_conflict`), `control_accuracy/<c>` (exact match on `<c>_control`) and `false_conflict/<c>` (share of
controls answered with `target_conflict`: a model that always says "conflict" recognises every conflict).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from data_builders.instances import build_instances
from data_builders.templates import ChatTemplate, get_template
from data_builders.tokenize import IGNORE_INDEX, encode_view, load_rgb
from recipes import CONFIG_DIR
from data_builders.atomic import atomic_write_text
from trainers.console import hydra_console_script
from trainers.models import load_for_inference, model_location, to_model

logger = logging.getLogger("xmodal.evaluate")


@dataclass(frozen=True)
class EvalItem:
    """One prompt to answer: an instance, or the teacher view of a paired one."""

    id: str
    condition: str
    messages: list  # the whole conversation; the last assistant turn is the reference answer
    images: list
    target: str


@dataclass
class Prediction:
    item: EvalItem
    prompt: str
    prediction: str
    correct: bool
    prompt_matches_training: bool


# --- scoring ---------------------------------------------------------------------------------------------------


def cut_at_end(text: str, end_markers: tuple[str, ...]) -> str:
    """The text before the first end marker (end-of-turn or padding token), if any."""
    return text[: min((text.find(marker) for marker in end_markers if marker and marker in text), default=len(text))]


def normalise_answer(text: str, end_markers: tuple[str, ...] = ()) -> str:
    """The comparable form of an answer: cut at the first end marker, whitespace collapsed, case-folded, no
    trailing periods. "  The sources conflict.</s>" and "the sources conflict" compare equal."""
    return " ".join(cut_at_end(text, end_markers).split()).casefold().rstrip(". ")


def is_correct(prediction: str, target: str, end_markers: tuple[str, ...] = ()) -> bool:
    return normalise_answer(prediction, end_markers) == normalise_answer(target)


def accuracy_by_condition(predictions: list[Prediction]) -> dict[str, dict]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for prediction in predictions:
        counts[prediction.item.condition][0] += prediction.correct
        counts[prediction.item.condition][1] += 1
    return {condition: _rate(correct, total) for condition, (correct, total) in sorted(counts.items())}


def _rate(hits: int, total: int) -> dict:
    return {"accuracy": hits / total if total else None, "correct": hits, "count": total}


def derived_metrics(predictions: list[Prediction], per_condition: dict[str, dict], conflict_answer: str | None) -> dict:
    """`modality_gap` when both centric conditions were evaluated; the conflict rates when `conflict_answer` is set."""
    derived: dict = {}
    if "text_centric" in per_condition and "vision_centric" in per_condition:
        derived["modality_gap"] = per_condition["text_centric"]["accuracy"] - per_condition["vision_centric"]["accuracy"]
    if conflict_answer is None:
        return derived
    by_condition: dict[str, list[Prediction]] = defaultdict(list)
    for prediction in predictions:
        by_condition[prediction.item.condition].append(prediction)
    for condition, group in sorted(by_condition.items()):
        said_conflict = _rate(sum(is_correct(p.prediction, conflict_answer) for p in group), len(group))
        if condition.endswith("_control"):
            base = condition.removesuffix("_control")
            derived[f"control_accuracy/{base}"] = _rate(sum(p.correct for p in group), len(group))
            derived[f"false_conflict/{base}"] = said_conflict
        else:
            derived[f"conflict_recognition/{condition}"] = said_conflict
    return derived


# --- instances and prompts ---------------------------------------------------------------------------------------


def eval_items(instances: list[dict], per_condition: int) -> list[EvalItem]:
    """The first `per_condition` items of each condition in build order (deterministic: the build is seeded)."""
    items: list[EvalItem] = []
    taken: dict[str, int] = defaultdict(int)
    for instance in instances:
        views = [(instance["id"], instance)]
        if instance.get("teacher"):
            teacher = instance["teacher"]
            record_id = (instance.get("meta") or {}).get("pair_id", instance["id"])
            views.append((f"{record_id}:{teacher['condition']}", teacher))
        for item_id, view in views:
            condition = view.get("condition", "default")
            if taken[condition] < per_condition:
                taken[condition] += 1
                items.append(EvalItem(item_id, condition, view["messages"], view.get("images", []), instance["target"]))
    return items


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation up to (without) its last assistant turn: what the model answers."""
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    return messages[:last]


def generation_prompt(item: EvalItem, processor) -> str:
    return processor.apply_chat_template(prompt_messages(item.messages), add_generation_prompt=True, tokenize=False)


def training_prompt_ids(item: EvalItem, processor, template: ChatTemplate) -> list[int]:
    """The tokens training puts before the last answer: the encoded conversation up to its last supervised run."""
    encoded = encode_view(item.messages, item.images, processor, template, f"instance {item.id!r}")
    labels = encoded["labels"]
    start = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return encoded["input_ids"][:start]


def prompt_inputs(prompts: list[str], items: list[EvalItem], processor) -> dict:
    """Left-padded model inputs (generation appends to the right end of every row)."""
    images = [load_rgb(path) for item in items for path in item.images]
    return processor(
        text=prompts, images=images or None, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"
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


def predict(model, processor, items: list[EvalItem], template: ChatTemplate, settings: DictConfig) -> list[Prediction]:
    """Greedy answers, `settings.batch_size` prompts at a time, one condition per batch."""
    markers = end_markers(processor, model)
    predictions = []
    for start in range(0, len(items), settings.batch_size):
        batch = items[start : start + settings.batch_size]
        prompts = [generation_prompt(item, processor) for item in batch]
        inputs = to_model(prompt_inputs(prompts, batch, processor), model)
        with torch.no_grad():
            generated = model.generate(
                **inputs,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        answers = processor.tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1] :])
        for row, (item, prompt, answer) in enumerate(zip(batch, prompts, answers)):
            answer = cut_at_end(answer, markers).strip()
            prompt_ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
            matches = prompt_ids == training_prompt_ids(item, processor, template)
            predictions.append(Prediction(item, prompt, answer, is_correct(answer, item.target), matches))
    return predictions


def evaluate_checkpoint(path: str, items: list[EvalItem], cfg: DictConfig, conflict_answer: str | None):
    """(report for eval.json, predictions) of one checkpoint."""
    model, processor = load_for_inference(path, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
    predictions = predict(model, processor, items, get_template(cfg.model.template), cfg.evaluate)
    per_condition = accuracy_by_condition(predictions)
    mismatches: dict[str, int] = defaultdict(int)
    for prediction in predictions:
        mismatches[prediction.item.condition] += not prediction.prompt_matches_training
    for condition, count in mismatches.items():
        per_condition[condition]["prompt_mismatches"] = count
        if count:
            logger.warning(
                "%s %s: %d prompt(s) from the chat template differ from the training tokens of template %r",
                path, condition, count, cfg.model.template,
            )
    derived = derived_metrics(predictions, per_condition, conflict_answer)
    report = {"checkpoint": path, "conditions": per_condition, "derived": derived}
    return report, predictions


# --- reports -----------------------------------------------------------------------------------------------------


def results_table(reports: list[dict]) -> str:
    """Markdown: one row per checkpoint, a column per condition (accuracy with counts) and per derived metric."""
    conditions = sorted({c for report in reports for c in report["conditions"]})
    derived = sorted({name for report in reports for name in report["derived"]})
    header = ["checkpoint", *conditions, *derived]
    rows = [
        [report["checkpoint"]]
        + [_cell(report["conditions"].get(c)) for c in conditions]
        + [_cell(report["derived"].get(name)) for name in derived]
        for report in reports
    ]
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return f"{value['accuracy']:.3f} ({value['correct']}/{value['count']})"
    return f"{value:+.3f}"


def prediction_lines(checkpoint: str, predictions: list[Prediction]) -> list[str]:
    return [
        json.dumps(
            {
                "checkpoint": checkpoint,
                "id": p.item.id,
                "condition": p.item.condition,
                "prompt": p.prompt,
                "target": p.item.target,
                "prediction": p.prediction,
                "correct": p.correct,
            }
        )
        + "\n"
        for p in predictions
    ]


# --- the recipe --------------------------------------------------------------------------------------------------


def run(cfg: DictConfig) -> str:
    """Evaluate `evaluate.checkpoints` (or the configured model); returns the path of eval.json."""
    settings = cfg.evaluate
    checkpoints = list(settings.checkpoints) or [model_location(cfg)]
    built = build_instances(cfg)
    builder = built.builder
    items = eval_items(built.instances, settings.per_condition)
    # Batches stay within one condition, so padding and per-condition timings stay comparable.
    items.sort(key=lambda item: item.condition)
    conflict_answer = getattr(builder, "target_conflict", None)
    reports, lines = [], []
    for path in checkpoints:
        report, predictions = evaluate_checkpoint(path, items, cfg, conflict_answer)
        reports.append(report)
        lines.extend(prediction_lines(path, predictions))
    out_dir = settings.out_dir
    summary = {
        "settings": {
            **OmegaConf.to_container(settings, resolve=True),
            "checkpoints": checkpoints,
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "builder": OmegaConf.to_container(cfg.builder, resolve=True),
            "seed": cfg.seed,
            "scoring": "normalised exact match: cut at the first end token, whitespace collapsed, case-folded, "
            "trailing periods dropped",
        },
        "results": reports,
    }
    json_path = os.path.join(out_dir, "eval.json")
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "predictions.jsonl"), "".join(lines))
    table = results_table(reports)
    atomic_write_text(os.path.join(out_dir, "results.md"), table)
    print(table, end="")
    logger.info("eval: %s", json_path)
    return json_path


# The console script: compose `conf/evaluate.yaml` with the command-line overrides, then `run` it.
main = hydra_console_script("xmodal-eval", run, CONFIG_DIR, "evaluate")


if __name__ == "__main__":
    main()
