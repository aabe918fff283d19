"""`MetricCallback` in a real (tiny, CPU) HF Trainer run: its scalars land at the due steps, beside the step's own
loss log (which `Trainer.log` would otherwise swallow), and an unbound callback says how to fix it."""

from __future__ import annotations

import pytest
from tests.trainers.metrics.test_callback import tiny_trainer

from xmodal.trainers.metrics.base import MetricCallback


class ProbeCount(MetricCallback):
    """Logs how many probe rows it was bound with, prepared as a training step prepares a batch."""

    scope = "probe_count"

    def bind(self, trainer, probe_rows=None, probe_instances=None, collator=None):
        super().bind(trainer)
        self.rows = [trainer.train_dataset[i] for i in range(2)]
        self.batch = (collator or trainer.data_collator)(self.rows)

    def on_due_step(self, args, state, control, model) -> None:
        inputs = self.prepare_inputs(self.batch)
        self.log(control, {"probe/rows": float(inputs["input_ids"].shape[0]), "probe/on_model_device": float(
            inputs["input_ids"].device == model.device)})


def test_scalars_are_logged_at_due_steps_beside_the_loss(tmp_path):
    trainer = tiny_trainer(tmp_path, ProbeCount(every_n_steps=2), report_to=[])
    trainer.train()
    history = trainer.state.log_history
    assert [(entry["step"], entry["probe/rows"], entry["probe/on_model_device"]) for entry in history if "probe/rows" in entry] == [
        (2, 2.0, 1.0), (4, 2.0, 1.0)
    ]
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3, 4]  # logging_steps=1: none eaten


def test_a_schedule_must_be_positive_and_a_callback_bound():
    with pytest.raises(ValueError, match="metrics.probe_count.every_n_steps must be positive, got 0"):
        ProbeCount(every_n_steps=0)
    with pytest.raises(RuntimeError, match=r"ProbeCount.bind\(trainer\) must be called before training"):
        ProbeCount(every_n_steps=1).on_step_end(None, type("State", (), {"global_step": 1})(), None)
