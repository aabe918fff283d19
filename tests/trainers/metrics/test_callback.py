"""`ImbalanceCallback` in a real (tiny, CPU) HF Trainer run: scalars at the configured steps, heat map to TensorBoard."""

from __future__ import annotations

import os

import datasets
import pytest
import torch
from tests.trainers.metrics.imbalance_support import BUILDERS, make_instances, masks_of
from transformers import Trainer, TrainingArguments

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.data_builders.tokenize import EncodingSettings, encode_instance
from xmodal.trainers.metrics.imbalance import measure
from xmodal.trainers.metrics.imbalance_callback import ImbalanceCallback


def tiny_trainer(tmp_path, callback, report_to):
    torch.manual_seed(0)
    model, processor = BUILDERS["llava"]()
    rows = [
        encode_instance(instance, processor, EncodingSettings(max_length=512))
        for instance in make_instances(tmp_path, 6)
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=report_to,
        remove_unused_columns=False,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        data_collator=MultimodalCollator(processor),
        processing_class=processor,
        callbacks=[callback],
    )
    callback.bind(trainer)
    return trainer


def test_logs_imbalance_at_configured_steps(tmp_path):
    callback = ImbalanceCallback(every_n_steps=2, probe_size=3, probe_batch_size=2, layers=[0, 1])
    trainer = tiny_trainer(tmp_path, callback, report_to=[])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "imbalance/ratio" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    entry = logged[-1]
    assert entry["imbalance/sequences"] == 3
    assert 0.0 < entry["imbalance/ratio"] < 1.0
    assert {"imbalance/ratio/layer_0", "imbalance/ratio/layer_1", "imbalance/per_token_ratio"} <= set(entry)
    assert {"imbalance/mass_image", "imbalance/mass_text", "imbalance/per_token_image", "imbalance/per_token_text"} <= set(entry)
    # The logged means are those of a direct measurement of the trained model on the same probe.
    model, processor = trainer.model, trainer.processing_class
    batch = MultimodalCollator(processor)([trainer.train_dataset[i] for i in range(3)])
    masks = masks_of(batch, model, processor)
    direct = measure(model, batch, masks.query, masks.a, masks.b)
    assert entry["imbalance/ratio"] == pytest.approx(direct.mean().ratio.mean().item(), abs=1e-6)


def test_heatmap_reaches_tensorboard(tmp_path):
    callback = ImbalanceCallback(every_n_steps=4, probe_size=2, probe_batch_size=2)
    trainer = tiny_trainer(tmp_path, callback, report_to=["tensorboard"])
    trainer.train()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dirs = [root for root, _, files in os.walk(tmp_path / "run") if any("tfevents" in f for f in files)]
    tags = set()
    for directory in event_dirs:
        events = EventAccumulator(directory)
        events.Reload()
        tags |= set(events.Tags()["images"]) | set(events.Tags()["scalars"])
    assert "imbalance/heatmap" in tags
    assert "train/imbalance/ratio" in tags or "imbalance/ratio" in tags


def test_unbound_callback_says_how_to_fix():
    callback = ImbalanceCallback(every_n_steps=1)

    class State:
        global_step = 1

    with pytest.raises(RuntimeError, match="bind"):
        callback.on_step_end(None, State(), None, model=None)
