"""Training metric: answers to a fixed held-out set every N optimizer steps, scored as `xmodal-eval` scores them.

Logs `eval/accuracy/<condition>`, `eval/modality_gap` (text-centric minus vision-centric) and, with
`builder=conflict`, `eval/conflict_recognition/<c>`, `eval/control_accuracy/<c>`, `eval/false_conflict/<c>`
through `trainer.log` (metrics.jsonl, wandb, TensorBoard), plus `eval/items` and `eval/prompt_mismatches` (items
whose generation prompt differs from the training tokens: should be 0). Generation and scoring are
trainers/evaluation's, the same code as `xmodal-eval`.

The held-out set is the run's `data` and `builder` configs with `data_overrides` and `builder_overrides` applied
(e.g. another `seed` for generated data, `split: test` for PGPS9K, `emit: both` to put both views of each record
to a paired run), built once in `bind`. Distributed: under ZeRO-3 every rank answers every batch (generation
gathers the sharded weights collectively in every forward, so all ranks must run the same forwards); otherwise
each rank answers its share of the batches and the answers are gathered, so every rank logs the same values.
"""

from __future__ import annotations

import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from xmodal.core.errors import ConfigError
from xmodal.data_builders.instances import build_instances
from xmodal.trainers.evaluation.answers import GenerationSettings, Prediction, batch_count, eval_items, predict
from xmodal.trainers.evaluation.report import flat_scalars, summarise
from xmodal.trainers.metrics.base import MetricCallback

LOG_PREFIX = "eval"


class EvalCallback(MetricCallback):
    """Evaluates `per_condition` held-out items per condition every `every_n_steps` optimizer steps and at the
    last step. `generation`: GenerationSettings fields (greedy by default)."""

    scope = "eval"

    def __init__(
        self,
        data: DictConfig,
        builder: DictConfig,
        data_overrides: dict | None = None,
        builder_overrides: dict | None = None,
        judge: DictConfig | None = None,
        every_n_steps: int = 100,
        per_condition: int | None = 16,
        generation: dict | None = None,
        prompt_style: str = "compact",
        seed: int = 0,
    ):
        super().__init__(every_n_steps)
        self.heldout_data = _overridden(data, data_overrides, "data")
        self.heldout_builder = _overridden(builder, builder_overrides, "builder")
        self.seed = seed
        self.judge = instantiate(judge) if judge is not None else None
        self.per_condition = per_condition
        self.settings = GenerationSettings.from_config(
            {"seed": seed, **OmegaConf.to_container(OmegaConf.create(generation or {}), resolve=True)}, prompt_style
        )
        self.items = []

    def bind(self, trainer, probe_rows=None, probe_instances=None, collator=None) -> None:
        """Attach to `trainer` and build the held-out items once. The held-out set is the callback's own: the
        probe arguments a recipe hands every metric callback (for `metrics=imbalance`) are not used."""
        super().bind(trainer)
        built = build_instances(self.heldout_data, self.heldout_builder, seed=self.seed)
        items = eval_items(built.instances, self.per_condition)
        self.items = sorted(items, key=lambda item: item.condition)  # batches within one condition, as in xmodal-eval

    def due(self, state) -> bool:
        return super().due(state) or state.global_step == state.max_steps

    def on_due_step(self, args, state, control, model) -> None:
        predictions = self.answer_heldout()
        mismatches = sum(not prediction.prompt_matches_training for prediction in predictions)
        scalars = {f"{LOG_PREFIX}/items": len(predictions), f"{LOG_PREFIX}/prompt_mismatches": mismatches}
        self.log(control, {**scalars, **flat_scalars(summarise(predictions, resamples=0), LOG_PREFIX)})

    def answer_heldout(self) -> list[Prediction]:
        """Every held-out item's prediction, on every rank."""
        trainer = self.trainer
        model = trainer.model
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        shared = world > 1 and not is_deepspeed_zero3_enabled()
        batches = list(range(rank, batch_count(self.items, self.settings), world)) if shared else None
        was_training = model.training
        model.eval()
        try:
            # Inputs go to the model's device and dtype (DeepSpeed casts the module to bf16/fp16), not through
            # trainer._prepare_inputs: a GRPO trainer's generates rollouts there.
            predictions = predict(
                model, trainer.processing_class, self.items, self.settings, self.judge, batches=batches
            )
        finally:
            model.train(was_training)
        if not shared:
            return predictions
        gathered: list[list[Prediction]] = [None] * world
        dist.all_gather_object(gathered, predictions)
        return [prediction for part in gathered for prediction in part]


def _overridden(node: DictConfig, overrides: dict | None, name: str) -> DictConfig:
    """`node` with `overrides` applied; each overridden field must exist (a typo must not evaluate on training data)."""
    overrides = OmegaConf.to_container(OmegaConf.create(overrides or {}), resolve=True)
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    if name == "data" and not overrides:
        raise ConfigError(
            "metrics.eval.data_overrides is empty: the held-out set would be training records; "
            "set e.g. '{seed: 7}' for data=synthetic or '{split: test}' for data=pgps9k"
        )
    unknown = sorted(set(overrides) - set(node))
    if unknown:
        raise ConfigError(
            f"metrics.eval.{name}_overrides: {name} {node.get('_target_')} has no field(s) {unknown}; "
            f"its fields are {sorted(node)} (held-out records: e.g. '{{seed: 7}}' for data=synthetic, "
            "'{split: test}' for data=pgps9k)"
        )
    return OmegaConf.merge(node, overrides)
