"""The real `xmodal-train` entry point on tiny models: trains, logs, checkpoints, and saves a reloadable model."""

from __future__ import annotations

import gc
import glob
import json
import os

import pytest
import torch
import yaml
from PIL import Image
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import AutoModelForImageTextToText

from tests.support.helpers import FAST, PGPS9K_SAMPLE, compose_config, loss_by_step, read_metrics, xmodal_train
from xmodal.core.errors import DataError
from xmodal.recipes import finetune
from xmodal.trainers.lifecycle.checkpoints import COMPLETE_MARKER
from xmodal.recipes import base_model
from xmodal.trainers.models import load_processor


def _prompt_inputs(processor) -> dict:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the value of A?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[prompt], images=[Image.new("RGB", (64, 64), (255, 255, 255))], return_tensors="pt")


def _generate(final_dir: str) -> str:
    model = AutoModelForImageTextToText.from_pretrained(final_dir)
    processor = load_processor(final_dir)
    inputs = _prompt_inputs(processor)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    return processor.tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :])


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits


def _assert_final_is_the_trained_model(out, finetune: str):
    """`final/` answers as the last checkpoint's model (LoRA: base + unmerged adapter) does, and not as the base."""
    base_dir = base_model(OmegaConf.load(out / "config.yaml"))  # the run's own base, from its resolved config
    inputs = _prompt_inputs(load_processor(str(out / "final")))
    final = _logits(AutoModelForImageTextToText.from_pretrained(out / "final"), inputs)
    last_checkpoint = out / "checkpoint-4"
    if finetune == "lora":
        trained = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base_dir), last_checkpoint)
    else:
        trained = AutoModelForImageTextToText.from_pretrained(last_checkpoint)
    base = _logits(AutoModelForImageTextToText.from_pretrained(base_dir), inputs)
    torch.testing.assert_close(final, _logits(trained, inputs), rtol=1e-4, atol=1e-4)
    assert (final - base).abs().max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_llava", "tiny_qwen2_vl"])
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_train_saves_a_model_that_reloads_and_generates(model, finetune, tmp_path, cache_dir):
    out = tmp_path / "run"
    xmodal_train([*FAST, f"model={model}", f"finetune={finetune}", f"output_dir={out}"], cache_dir)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["finetune"]["mode"] == finetune
    losses = loss_by_step(str(out))
    assert sorted(losses) == [1, 2, 3, 4]
    assert all(record["loss"] == pytest.approx(record["lm_loss"], rel=1e-5) for record in read_metrics(str(out)) if "lm_loss" in record)
    checkpoints = sorted(glob.glob(str(out / "checkpoint-*")))
    assert checkpoints and all(os.path.exists(os.path.join(c, COMPLETE_MARKER)) for c in checkpoints)
    _assert_final_is_the_trained_model(out, finetune)
    _generate(str(out / "final"))


@pytest.mark.slow
def test_default_run_learns_to_read_the_facts_from_the_image(tmp_path, cache_dir):
    """The README's main job, unchanged: the base-stage tiny LLaVA fine-tuned on the vision-centric facts task.

    A model that ignores the image plateaus at the answer-level chance loss (about 1.1: one of ten values, plus
    the end token); reading the cells takes the loss well below it.
    """
    out = tmp_path / "run"
    xmodal_train([f"output_dir={out}"], cache_dir)
    losses = loss_by_step(str(out))
    assert losses[10] > 2.0 and losses[200] < 0.7


@pytest.mark.slow
def test_the_trainers_full_collections_skip_what_outlives_the_run(tmp_path, cache_dir, monkeypatch):
    """Every gc.collect() during training (the Trainer's at the start, free_memory's at the end) sees the objects
    alive before the run frozen, and none stays frozen after it."""
    frozen_at_collection = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *args: frozen_at_collection.append(gc.get_freeze_count()) or collect(*args))
    xmodal_train([*FAST, f"output_dir={tmp_path / 'run'}"], cache_dir)
    assert len(frozen_at_collection) >= 2 and min(frozen_at_collection) > 100_000
    assert gc.get_freeze_count() == 0


@pytest.mark.slow
def test_alignment_loss_falls_while_training_paired_views(tmp_path, cache_dir):
    """`builder=paired loss=lm_kl` on the default model: the vision-centric branch moves towards the text-centric one."""
    out = tmp_path / "run"
    xmodal_train(["builder=paired", "loss=lm_kl", f"output_dir={out}"], cache_dir)
    align = loss_by_step(str(out), "align_loss")
    late = [align[step] for step in range(160, 201, 10)]
    assert sum(late) / len(late) < 0.5 * align[20]


@pytest.mark.slow
@pytest.mark.parametrize("logger,pattern", [("wandb", "wandb/offline-run-*"), ("tensorboard", "tensorboard/events.out.tfevents.*")])
def test_loggers_write_offline(logger, pattern, tmp_path, cache_dir, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "run"
    xmodal_train([*FAST, f"logger={logger}", f"output_dir={out}"], cache_dir)
    assert glob.glob(str(out / pattern))


# What one optimizer step logs: the back-propagated total, each term, and the norm of the gradient it made.
FIRST_STEP_KEYS = ("loss", "lm_loss", "align_loss", "grad_norm")


def first_step_logs(split_args: list[str], out, cache_dir: str, processes: int = 1) -> dict[str, float]:
    """Step 1 of a `builder=paired loss=lm_kl` run at the batch split `split_args`: the values of FIRST_STEP_KEYS."""
    xmodal_train(
        [*FAST, "builder=paired", "loss=lm_kl", "trainer.max_steps=1", *split_args, f"output_dir={out}"],
        cache_dir,
        processes=processes,
    )
    first = next(record for record in read_metrics(str(out)) if "lm_loss" in record)
    return {key: first[key] for key in FIRST_STEP_KEYS}


def assert_same_first_step(logs: dict[str, float], reference: dict[str, float]):
    for key in FIRST_STEP_KEYS:
        assert logs[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), (key, logs, reference)


@pytest.mark.slow
def test_first_step_losses_do_not_depend_on_the_accumulation_split(tmp_path, cache_dir):
    """At a fixed global batch of 4, (4 x 1), (2 x 2) and (1 x 4) back-propagate the same loss and gradient."""
    firsts = [
        first_step_logs(
            [f"trainer.per_device_train_batch_size={per_device}", f"trainer.gradient_accumulation_steps={accumulation}"],
            tmp_path / f"ga{accumulation}",
            cache_dir,
        )
        for per_device, accumulation in [(4, 1), (2, 2), (1, 4)]
    ]
    for logs in firsts[1:]:
        assert_same_first_step(logs, firsts[0])


MIXTURE = ["data.sources.image.num_records=24", "data.sources.text.num_records=24"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "builder_args",
    [
        ["builder=single", "data.num_records=24"],
        ["builder=dataset_mix", *MIXTURE],
        ["builder=instance_mix", *MIXTURE],
        ["builder=paired", "loss=lm_kl", "data.num_records=24"],
        ["builder=curriculum", "data.num_records=24"],
        ["builder=conflict", "data.num_records=2"],
        pytest.param(
            ["builder=paired", "loss=lm_kl", "data=pgps9k", f"data.root={PGPS9K_SAMPLE}"],
            marks=pytest.mark.skipif(not os.path.isdir(PGPS9K_SAMPLE), reason="PGPS9K sample not found"),
        ),
    ],
    ids=["single", "dataset_mix", "instance_mix", "paired", "curriculum", "conflict", "pgps9k-paired"],
)
def test_every_builder_trains_through_the_recipe(builder_args, tmp_path, cache_dir):
    out = tmp_path / "run"
    xmodal_train(["debug=fast", "model=tiny_llava", "trainer.max_steps=2", *builder_args, f"output_dir={out}"], cache_dir)
    assert sorted(loss_by_step(str(out))) == [1, 2]
    if "loss=lm_kl" in builder_args:
        assert all("align_loss" in record for record in read_metrics(str(out)) if "lm_loss" in record)


def _write_llava_records(folder, records: list[dict]) -> str:
    images = folder / "images"
    images.mkdir()
    for index in range(4):
        Image.new("RGB", (80, 60), (60 * index, 100, 200)).save(images / f"{index}.jpg")
    path = folder / "llava.json"
    path.write_text(json.dumps(records))
    return str(path)


def _llava_record(index: int, image: str) -> dict:
    return {
        "id": f"r{index}",
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour dominates?"},
            {"from": "gpt", "value": "Blue."},
            {"from": "human", "value": "Is it bright?"},
            {"from": "gpt", "value": "Yes."},
        ],
    }


@pytest.mark.slow
def test_llava_instruct_json_with_text_only_records_trains(tmp_path, cache_dir):
    records = [_llava_record(i, f"{i % 4}.jpg") for i in range(8)]
    records.append({"id": "text", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]})
    path = _write_llava_records(tmp_path, records)
    out = tmp_path / "run"
    xmodal_train(
        ["debug=fast", "model=tiny_llava", "data=llava_instruct", f"data.path={path}", f"data.image_folder={tmp_path / 'images'}", f"output_dir={out}"],
        cache_dir,
    )
    assert sorted(loss_by_step(str(out))) == [1, 2, 3, 4]


def test_a_record_with_a_missing_image_stops_the_run_naming_file_record_and_field(tmp_path, cache_dir):
    path = _write_llava_records(tmp_path, [_llava_record(0, "0.jpg"), _llava_record(1, "missing.jpg")])
    cfg = compose_config([
        "debug=fast", "model=tiny_llava", "data=llava_instruct", f"data.path={path}",
        f"data.image_folder={tmp_path / 'images'}", f"output_dir={tmp_path / 'run'}",
    ])
    with pytest.raises(DataError, match=r"llava.json: record 'r1', field 'image'.*missing.jpg"):
        finetune.train(cfg)
    assert not (tmp_path / "run" / "final").exists()
