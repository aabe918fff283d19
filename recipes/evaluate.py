"""xmodal-eval: answers of checkpoints per instance condition -> eval.json, predictions.jsonl, results.md.

`xmodal-eval [overrides]` composes `conf/evaluate.yaml` (the root config plus an `evaluate` node), so model, data,
builder and encoding mean what they mean for `xmodal-train`, e.g. the modality gap of two runs on held-out records:

    xmodal-eval builder=paired data.seed=7 evaluate.checkpoints=[runs/text/final,runs/mix/final]

Every instance of the built split is answered (`evaluate.per_condition` caps it), greedily by default or
`evaluate.num_samples` times at `evaluate.temperature`, and scored by the grader `evaluate.grader` names
(`xmodal.core.scoring.grader`: `lenient`, `answers_match`, or `release`, paper 2's released evaluation; accuracy
averaged over samples). Prompts are the built instances' own, i.e. the training prompts (trainers/evaluation/
answers.py; PGPS9K's `data.prompt_style=release_eval`, which `setting=paper` picks, gives the released
evaluation's prompts instead); instances whose chat
template prompt differs from the training tokens are counted per condition (`prompt_mismatches`) and logged.
Rates, the modality gap, the conflict rates (judged by the `judge` config group) and their paired-bootstrap
confidence intervals are described in trainers/evaluation/report.py.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import asdict

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from xmodal.core.atomic import atomic_write_text
from xmodal.recipes import CONFIG_DIR, base_model, instances_of
from xmodal.conf.schema import check_schema
from xmodal.core.console import hydra_console_script
from xmodal.trainers.evaluation.answers import EvalItem, GenerationSettings, Prediction, eval_items, predict
from xmodal.trainers.evaluation.report import results_table, summarise
from xmodal.trainers.models import load_for_inference

logger = logging.getLogger("xmodal.evaluate")


def evaluate_checkpoint(
    path: str, items: list[EvalItem], cfg: DictConfig, generation: GenerationSettings, judge
) -> tuple[dict, list[Prediction]]:
    """(report for eval.json, predictions) of one checkpoint."""
    settings = cfg.evaluate
    model, processor = load_for_inference(
        path, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code
    )
    predictions = predict(model, processor, items, generation, judge, progress=f"answering {path}")
    summary = summarise(predictions, settings.bootstrap_resamples, settings.seed, settings.confidence)
    report = {"checkpoint": path, **summary}
    mismatches: dict[str, int] = defaultdict(int)
    for prediction in predictions:
        mismatches[prediction.item.condition] += not prediction.prompt_matches_training
    for condition, count in mismatches.items():
        report["conditions"][condition]["prompt_mismatches"] = count
        if count:
            logger.warning(
                "%s %s: %d prompt(s) from the chat template differ from the training tokens", path, condition, count,
            )
    return report, predictions


def prediction_lines(checkpoint: str, predictions: list[Prediction]) -> list[str]:
    """One JSON line per item: its prompt, target, every sampled answer and its scores."""
    return [
        json.dumps(
            {
                "checkpoint": checkpoint,
                "id": p.item.id,
                "record": p.item.record,
                "condition": p.item.condition,
                "prompt": p.prompt,
                "target": p.item.target,
                "answers": p.answers,
                "correct": p.correct,
                **({"said_conflict": p.said_conflict} if p.said_conflict is not None else {}),
            }
        )
        + "\n"
        for p in predictions
    ]


# --- the recipe --------------------------------------------------------------------------------------------------


def run(cfg: DictConfig) -> str:
    """Evaluate `evaluate.checkpoints` (or the configured model); returns the path of eval.json."""
    settings = cfg.evaluate
    checkpoints = list(settings.checkpoints) or [base_model(cfg)]
    items = eval_items(instances_of(cfg).instances, settings.per_condition)
    # Batches stay within one condition, so padding and per-condition timings stay comparable.
    items.sort(key=lambda item: item.condition)
    generation = GenerationSettings.from_config(settings, OmegaConf.select(cfg, "data.prompt_style", default="compact"))
    judge = instantiate(cfg.judge)
    reports, lines = [], []
    for path in checkpoints:
        report, predictions = evaluate_checkpoint(path, items, cfg, generation, judge)
        reports.append(report)
        lines.extend(prediction_lines(path, predictions))
    out_dir = settings.out_dir
    summary = {
        "settings": {
            **OmegaConf.to_container(settings, resolve=True),
            "generation": asdict(generation),
            "checkpoints": checkpoints,
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "builder": OmegaConf.to_container(cfg.builder, resolve=True),
            "judge": OmegaConf.to_container(cfg.judge, resolve=True),
            "seed": cfg.seed,
            "scoring": f"xmodal.core.scoring.grader({generation.grader!r}) after cutting at the first end token",
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
main = hydra_console_script("xmodal-eval", run, CONFIG_DIR, "evaluate", check=check_schema)


if __name__ == "__main__":
    main()
