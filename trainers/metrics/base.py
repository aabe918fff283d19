"""`MetricCallback`: what every training-metric callback (`metrics=imbalance`, `metrics=eval`, ...) shares.

- `bind(trainer, ...)`: the recipe attaches the callback once the trainer exists (probe rows and a collator are
  offered to every callback; each takes what it needs);
- a schedule: `on_due_step` runs every `every_n_steps` optimizer steps (`due` says when);
- `log(control, scalars)`: through `trainer.log`, so scalars reach metrics.jsonl, wandb and TensorBoard, without
  eating the step's own loss log;
- `prepare_inputs(batch)`: a collated batch on the device and in the DeepSpeed dtype, as a training step sees it.
"""

from __future__ import annotations

from transformers import Trainer, TrainerCallback


class MetricCallback(TrainerCallback):
    """Subclasses implement `on_due_step(args, state, control, model)`; `scope` names the callback in errors."""

    scope = "metric"

    def __init__(self, every_n_steps: int):
        if every_n_steps < 1:
            raise ValueError(f"metrics.{self.scope}.every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.trainer = None

    def bind(self, trainer, probe_rows: list[dict] | None = None, probe_instances: list[dict] | None = None, collator=None):
        """Attach to `trainer`. `probe_rows` (tokenized rows), their `probe_instances` and a `collator` are what a
        recipe offers every metric callback (xmodal-rl's trainer collates prompts, not token rows)."""
        self.trainer = trainer

    def due(self, state) -> bool:
        return state.global_step % self.every_n_steps == 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.due(state):
            return
        if self.trainer is None:
            raise RuntimeError(f"{type(self).__name__}.bind(trainer) must be called before training")
        self.on_due_step(args, state, control, model)

    def on_due_step(self, args, state, control, model) -> None:
        raise NotImplementedError

    def log(self, control, scalars: dict[str, float]) -> None:
        # Trainer.log clears `should_log`, which the flow callback has just set for this step's loss log.
        should_log = control.should_log
        self.trainer.log(scalars)
        control.should_log = should_log

    def prepare_inputs(self, batch: dict) -> dict:
        """The base Trainer's preparation (device, DeepSpeed dtype): TRL's GRPO trainer overrides `_prepare_inputs`
        to generate rollouts, which a metric's forward must not trigger."""
        return Trainer._prepare_inputs(self.trainer, dict(batch))
