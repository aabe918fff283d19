"""Launched by test_distributed.py under torchrun: a tiny DeepSpeed run with the imbalance callback.

Writes each rank's logged `(step, imbalance/ratio, imbalance/sequences)` and its own unsharded measurement
of the final model to `<out>/rank<r>.json`.
Usage: torchrun --nproc_per_node 2 distributed_probe.py <zero stage> <weight|norm> <out dir>
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import datasets
import torch
from imbalance_support import BUILDERS, make_instances
from transformers import Trainer, TrainingArguments

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.data_builders.tokenize import EncodingSettings, encode_instance
from xmodal.core.distributed import configure_cpu_deepspeed_state, init_deepspeed_backend, teardown
from xmodal.trainers.metrics.imbalance import SpanStats, measure
from xmodal.trainers.metrics.imbalance_callback import ImbalanceCallback


def main(stage: int, mode: str, out: pathlib.Path) -> None:
    # Built before ZeRO-3 is configured (same seed, so the same weights on every rank); DeepSpeed then
    # partitions it when the Trainer starts.
    torch.manual_seed(0)
    model, processor = BUILDERS["qwen2"]()
    init_deepspeed_backend()
    configure_cpu_deepspeed_state()
    rank = int(os.environ["RANK"])
    deepspeed_config = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": stage},
    }
    args = TrainingArguments(
        output_dir=str(out / "run"), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], remove_unused_columns=False,
        deepspeed=deepspeed_config, accelerator_config={"use_configured_state": True},
    )
    image_dir = out / f"images{rank}"
    image_dir.mkdir(exist_ok=True)
    rows = [
        encode_instance(instance, processor, EncodingSettings(max_length=512))
        for instance in make_instances(image_dir, 8)
    ]
    # 5 probe rows in batches of 2: rank 0 measures 2 batches, rank 1 one batch plus one uncounted forward.
    callback = ImbalanceCallback(every_n_steps=2, probe_size=5, probe_batch_size=2, mode=mode)
    trainer = Trainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
        data_collator=MultimodalCollator(processor), processing_class=processor, callbacks=[callback],
    )
    callback.bind(trainer)
    trainer.train()
    logged = [
        [entry["step"], entry["imbalance/ratio"], entry["imbalance/sequences"]]
        for entry in trainer.state.log_history
        if "imbalance/ratio" in entry
    ]
    # Every rank measures the whole probe itself (same forwards on all ranks, as ZeRO-3 needs): the
    # sharded, all-reduced value logged at the last step must equal this unsharded one.
    sums, count = 0.0, 0
    for batch, masks in callback.probe:
        measured = measure(trainer.model, trainer._prepare_inputs(dict(batch)), masks.query, masks.a, masks.b, mode=mode)
        batch_sums, batch_count = measured.totals()
        sums, count = sums + batch_sums, count + int(batch_count)
    unsharded = SpanStats.from_stacked(sums / count).ratio.mean().item()
    (out / f"rank{rank}.json").write_text(json.dumps({"logged": logged, "unsharded": unsharded}))
    teardown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3]))
