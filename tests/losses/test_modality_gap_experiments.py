"""The modality-gap experiment configs compose into the intended builder and loss (nothing is trained)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from losses import build_loss
from recipes import CONFIG_DIR

CONF_DIR = Path(CONFIG_DIR)
EXPECTED = {  # experiment -> (builder target, paired emit or None, loss term classes)
    "full_text": ("PairedBuilder", "text_centric", {"LMLoss"}),
    "no_text": ("PairedBuilder", "vision_centric", {"LMLoss"}),
    "mix": ("PairedBuilder", "mix", {"LMLoss"}),
    "curriculum": ("CurriculumBuilder", None, {"LMLoss"}),
    "kl": ("PairedBuilder", "both", {"LMLoss", "AlignmentLoss"}),
    "kl_curriculum": ("CurriculumBuilder", None, {"LMLoss"}),
}


def _compose(name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment=modality_gap/{name}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # output_dir interpolates ${hydra:runtime.choices...}
    return cfg


def test_every_experiment_is_listed():
    assert sorted(p.stem for p in (CONF_DIR / "experiment" / "modality_gap").glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_experiment_composes_to_its_recipe(name):
    cfg = _compose(name)
    builder, emit, term_types = EXPECTED[name]
    assert cfg.builder._target_.endswith(builder)
    assert cfg.builder.get("emit") == emit
    assert {term._target_.rsplit(".", 1)[-1] for term in cfg.loss.terms.values() if term is not None} == term_types
    build_loss(cfg.loss)
    assert f"modality_gap/{name}/" in cfg.output_dir


def test_kl_is_the_released_setting_and_stage_two_starts_from_it():
    kl, stage_two = _compose("kl"), _compose("kl_curriculum")
    align = kl.loss.terms.align
    assert (align.kind, align.estimator, align.weight, align.teacher) == ("token", "k3", 0.01, "same")
    assert stage_two.model.path == f"{kl.output_dir}/final"
