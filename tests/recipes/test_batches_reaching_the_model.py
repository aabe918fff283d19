"""What the fine-tuning recipe hands the model, step by step: the batches `XModalSFTTrainer.training_step` receives
in an in-process `xmodal-train` run of two steps (tiny LLaVA), compared with what the builder and collator make.

A recording subclass of the real trainer keeps each batch and trains on it unchanged; nothing else is replaced.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from tests.support.helpers import compose_config
from xmodal.core.errors import ConfigError
from xmodal.recipes import finetune
from xmodal.trainers.models import load_processor, model_location
from xmodal.trainers.sft import XModalSFTTrainer

TWO_STEPS = ["debug=fast", "model=tiny_llava", "data.num_records=8", "trainer.max_steps=2", "trainer.save_steps=100"]


class Recorded:
    """What the model saw in each training step of an in-process run: its inputs, and its weights at the step."""

    def __init__(self):
        self.batches: list[dict] = []
        self.weights: list[dict[str, torch.Tensor]] = []


@pytest.fixture
def recorded(monkeypatch) -> Recorded:
    record = Recorded()

    class RecordingTrainer(XModalSFTTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            record.batches.append({key: value.clone() for key, value in inputs.items() if isinstance(value, torch.Tensor)})
            record.weights.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
            return super().training_step(model, inputs, *args, **kwargs)

    monkeypatch.setattr(finetune, "XModalSFTTrainer", RecordingTrainer)
    return record


def _run(overrides: list[str], tmp_path):
    cfg = compose_config([*TWO_STEPS, f"output_dir={tmp_path / 'run'}", *overrides])
    finetune.train(cfg)
    return cfg


def _rows(batch: dict) -> list[list[int]]:
    """The sequences of a padded batch, padding removed."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


def test_an_ordered_curriculum_reaches_the_model_in_the_builders_order(recorded, tmp_path, cache_dir):
    cfg = _run(["builder=curriculum", "builder.switch_step=1"], tmp_path)
    processor = load_processor(model_location(cfg.model, cfg.cache_dir, cfg.seed), cfg.model.trust_remote_code)
    schedule, built = finetune.build_train_dataset(cfg, processor)
    assert built.builder.ordered
    trained = [row for batch in recorded.batches for row in _rows(batch)]
    assert len(trained) == len(schedule) == 4  # 2 steps x 2 instances: the whole schedule, once
    # A shuffling sampler would also pass a text-centric-first check half of the time; the exact order does not.
    assert trained == [list(row["input_ids"]) for row in schedule]


def _packed_lengths(batch: dict) -> list[int]:
    """The lengths of the sequences packed into a padding-free row (positions restart at 0 for each)."""
    positions = batch["position_ids"][0].tolist()
    starts = [index for index, position in enumerate(positions) if position == 0]
    return [end - start for start, end in zip(starts, [*starts[1:], len(positions)])]


def test_packing_true_reaches_the_collator_and_each_row_holds_several_sequences(
    recorded, tmp_path, cache_dir
):
    _run(["packing=true"], tmp_path)
    assert len(recorded.batches) == 2
    for batch in recorded.batches:
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one padding-free row
        lengths = _packed_lengths(batch)
        assert len(lengths) == 2  # per_device_train_batch_size=2 sequences, positions restarting at each
        assert batch["position_ids"][0].tolist() == [p for length in lengths for p in range(length)]


def test_group_by_length_reaches_the_sampler_and_each_packed_row_holds_neighbours_in_length(
    recorded, tmp_path, cache_dir
):
    """8 records of 2 to 4 facts stated in the prompt (varied lengths), batches of 2: the length-grouped sampler
    sorts its one mega-batch by length and cuts it into pairs, so each step packs two sequences that are neighbours
    in the length order; a shuffling sampler pairs lengths at random."""
    cfg = _run(["packing=true", "trainer.train_sampling_strategy=group_by_length", "data.facts_in=both"], tmp_path)
    processor = load_processor(model_location(cfg.model, cfg.cache_dir, cfg.seed), cfg.model.trust_remote_code)
    dataset, _ = finetune.build_train_dataset(cfg, processor)
    lengths = sorted((len(row["input_ids"]) for row in dataset), reverse=True)
    assert len(lengths) == 8 and len(set(lengths)) > 2
    neighbours = {tuple(sorted(lengths[i : i + 2])) for i in range(0, len(lengths), 2)}
    assert len(recorded.batches) == 2
    for batch in recorded.batches:
        assert tuple(sorted(_packed_lengths(batch))) in neighbours, (_packed_lengths(batch), lengths)


def test_packing_with_metric_probes_is_refused_before_training(recorded, tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="packing=true: the metric callbacks' probes need one row per sequence"):
        _run(["packing=true", "metrics=imbalance"], tmp_path)
    assert recorded.batches == []


def test_a_resumed_run_starts_from_every_tensor_of_its_checkpoint(recorded, tmp_path, cache_dir):
    _run(["trainer.save_steps=1"], tmp_path)
    recorded.weights.clear()
    _run(["trainer.max_steps=3", "resume=true"], tmp_path)
    assert len(recorded.weights) == 1  # only step 3 is trained again
    # Read back by transformers' own loader, independent of the resume code under test.
    checkpoint = AutoModelForImageTextToText.from_pretrained(tmp_path / "run" / "checkpoint-2").state_dict()
    at_step_3 = recorded.weights[0]
    assert at_step_3.keys() == checkpoint.keys()
    assert any(tensor.dim() == 1 for tensor in checkpoint.values())
    for name, tensor in checkpoint.items():  # 1-D norm weights and biases included: they moved in training too
        assert torch.equal(at_step_3[name], tensor), name
