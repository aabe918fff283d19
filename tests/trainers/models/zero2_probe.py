"""Launched by test_families.py under torchrun: one ZeRO-2 optimizer step of every tiny family, with the projector's
learning rate at 0 (its weights must stay while the vision tower and the LM move, on every rank).

Writes `<out>/rank<r>.json`: per family, the step's loss and which components moved.
Usage: torchrun --nproc_per_node 2 zero2_probe.py <out dir> <family> [<family> ...]
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys

import datasets
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from transformers import TrainingArguments

from xmodal.core.distributed import configure_cpu_deepspeed_state, init_deepspeed_backend, teardown
from xmodal.data_builders.collate import MultimodalCollator
from xmodal.data_builders.tokenize import EncodingSettings, encode_instance
from xmodal.losses import build_loss
from xmodal.trainers.models import tiny
from xmodal.trainers.models.finetuning import FinetuneSettings, apply_finetuning, model_parts
from xmodal.trainers.sft import XModalSFTTrainer

TEXT = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4)
DEEPSPEED = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {"stage": 2},
}


def one_step(family: str, out: pathlib.Path, rank: int) -> dict:
    torch.manual_seed(0)  # the same weights on every rank
    model, processor = getattr(tiny, f"build_tiny_{family}")(text=TEXT, vision=VISION, vocab_size=384)
    model = apply_finetuning(model, FinetuneSettings(freeze_vision_tower=False))
    image = out / f"{family}-{rank}.png"
    Image.new("RGB", (32, 32), (200, 40 * rank, 0)).save(image)
    instance = {
        "id": family,
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        ],
        "images": [str(image)],
    }
    rows = [encode_instance(instance, processor, EncodingSettings())] * 2
    args = TrainingArguments(
        output_dir=str(out / family), max_steps=1, per_device_train_batch_size=1, learning_rate=1e-2,
        save_strategy="no", report_to=[], remove_unused_columns=False, logging_steps=1, disable_tqdm=True,
        deepspeed=DEEPSPEED, accelerator_config={"use_configured_state": True},
    )
    trainer = XModalSFTTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
        data_collator=MultimodalCollator(processor), processing_class=processor,
        loss_composer=build_loss({"terms": {"lm": {"_target_": "xmodal.losses.lm.LMLoss"}}}),
        component_learning_rates={"projector": 0.0},
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    # The next family's Trainer builds an Accelerator with a DeepSpeed plugin of its own, which accelerate
    # refuses while this one's state is alive; the process state (the gloo group) stays.
    AcceleratorState._reset_state()
    parts = model_parts(model)
    moved = {}
    for name, parameter in trainer.model.named_parameters():
        component = parts.component_of(name)
        moved[component] = moved.get(component, False) or not torch.equal(before[name], parameter.detach().cpu())
    loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    return {"loss": loss if math.isfinite(loss) else None, "moved": moved}


def main(out: pathlib.Path, families: list[str]) -> None:
    init_deepspeed_backend()
    configure_cpu_deepspeed_state()
    rank = int(os.environ["RANK"])
    results = {family: one_step(family, out, rank) for family in families}
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    teardown()


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), sys.argv[2:])
