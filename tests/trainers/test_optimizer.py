"""Learning rates per component: the optimizer's groups, weight decay as the HF Trainer leaves it out, and a rate of 0
that keeps its component's weights while the others move."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from tests.support.tiny_batches import MODELS, encoded_instances
from xmodal.core.errors import ConfigError
from xmodal.data_builders.collate import MultimodalCollator
from xmodal.losses import build_loss
from xmodal.trainers.models.finetuning import FinetuneSettings, LoraSettings, apply_finetuning, model_parts
from xmodal.trainers.sft import XModalSFTTrainer

LEARNING_RATE, WEIGHT_DECAY = 1e-2, 0.1


def _trainer(tmp_path, name: str, rates: dict, settings: FinetuneSettings) -> XModalSFTTrainer:
    torch.manual_seed(0)
    model, processor = MODELS[name]()
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=3, learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY, report_to=[], use_cpu=True, save_strategy="no", remove_unused_columns=False,
        disable_tqdm=True,
    )
    return XModalSFTTrainer(
        model=apply_finetuning(model, settings),
        args=args,
        train_dataset=encoded_instances(tmp_path, processor, paired=False),
        data_collator=MultimodalCollator(processor),
        processing_class=processor,
        loss_composer=build_loss({"terms": {"lm": {"_target_": "xmodal.losses.lm.LMLoss"}}}),
        component_learning_rates=rates,
    )


def _decays(model) -> dict[str, bool]:
    """Whether each trainable parameter is decayed, by the HF Trainer's rule written out: not biases, not norms."""
    modules = dict(model.named_modules())
    decays = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            owner = type(modules[name.rpartition(".")[0]]).__name__
            decays[name] = not name.endswith("bias") and "Norm" not in owner
    return decays


@pytest.mark.parametrize("name", sorted(MODELS))
def test_groups_carry_each_components_rate_and_decay(name, tmp_path):
    rates = {"vision_tower": 0.0, "projector": 0.05, "language_model": None}
    trainer = _trainer(tmp_path, name, rates, FinetuneSettings(freeze_vision_tower=False))
    optimizer = trainer.create_optimizer()
    model = trainer.model
    parts = model_parts(model)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    expected_rates = {"vision_tower": 0.0, "projector": 0.05, "language_model": LEARNING_RATE}
    decays = _decays(model)
    grouped = set()
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter_name = names[id(parameter)]
            assert parts.component_of(parameter_name) == group["component"]
            assert group["lr"] == expected_rates[group["component"]]
            assert group["weight_decay"] == (WEIGHT_DECAY if decays[parameter_name] else 0.0), parameter_name
            grouped.add(parameter_name)
    assert grouped == set(decays)  # every trainable parameter is in exactly one group
    assert {group["component"] for group in optimizer.param_groups} == set(expected_rates)


@pytest.mark.parametrize(
    "settings", [FinetuneSettings(freeze_vision_tower=False), FinetuneSettings(mode="lora", lora=LoraSettings(r=4))],
    ids=["full", "lora"],
)
def test_a_zero_rate_keeps_its_component_while_the_others_move(tmp_path, settings):
    trainer = _trainer(tmp_path, "llava", {"projector": 0.0}, settings)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    parts = model_parts(trainer.model)
    moved: dict[str, bool] = {}
    for name, parameter in trainer.model.named_parameters():
        if name in before:
            component = parts.component_of(name)
            moved[component] = moved.get(component, False) or not torch.equal(before[name], parameter.detach())
    trained = {"vision_tower", "projector", "language_model"} if settings.mode == "full" else {"projector", "language_model"}
    assert set(moved) == trained
    assert moved == {component: component != "projector" for component in trained}


def test_an_unknown_component_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr: unknown component"):
        _trainer(tmp_path, "llava", {"connector": 1e-3}, FinetuneSettings())
