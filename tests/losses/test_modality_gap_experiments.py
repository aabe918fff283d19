"""The modality-gap experiment configs compose into the intended builder and loss (nothing is trained)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from xmodal.losses import LossContext, build_loss
from xmodal.losses.alignment import AlignmentLoss
from xmodal.recipes import CONFIG_DIR

CONF_DIR = Path(CONFIG_DIR)
EXPECTED = {  # experiment -> (builder target, paired emit or None, loss term classes)
    "full_text": ("PairedBuilder", "text_centric", {"LMLoss"}),
    "no_text": ("PairedBuilder", "vision_centric", {"LMLoss"}),
    "mix": ("PairedBuilder", "mix", {"LMLoss"}),
    "curriculum": ("CurriculumBuilder", None, {"LMLoss"}),
    "kl": ("PairedBuilder", "both", {"LMLoss", "AlignmentLoss"}),
    "kl_mix": ("PairedBuilder", "both", {"LMLoss", "AlignmentLoss"}),
    "kl_curriculum": ("PairedBuilder", "vision_centric", {"LMLoss"}),
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
    assert (align.kind, align.estimator, align.weight, align.teacher, align.clamp) == ("token", "k3", 0.01, "same", True)
    assert stage_two.model.path == f"{kl.output_dir}/final"
    assert stage_two.builder.emit == "vision_centric"  # stage 2 is vision-centric only, not a second curriculum


def _student_gradient(loss_cfg, make_batch, paired_layouts):
    batch, outputs = make_batch(paired_layouts, paired=True)
    total, _ = build_loss(loss_cfg)(LossContext(model=None, batch=batch, outputs=outputs))
    total.backward()
    return batch, outputs, outputs.logits.grad


def test_kl_trains_the_vision_centric_view_only_through_the_alignment_term(make_batch, paired_layouts):
    batch, outputs, gradient = _student_gradient(_compose("kl").loss, make_batch, paired_layouts)
    pairs = len(paired_layouts) // 2
    assert gradient[pairs:].abs().sum() > 0  # the LM loss trains the text-centric (teacher) rows
    # The student rows' gradient is exactly 0.01 x the alignment term's, i.e. the LM loss adds nothing there.
    logits = outputs.logits.detach().requires_grad_()
    (0.01 * AlignmentLoss(kind="token", estimator="k3")(LossContext(None, batch, type(outputs)(logits=logits)))).backward()
    torch.testing.assert_close(gradient[:pairs], logits.grad[:pairs])


def test_kl_mix_variant_also_trains_the_vision_centric_view_with_the_lm_loss(make_batch, paired_layouts):
    batch, outputs, kl_mix = _student_gradient(_compose("kl_mix").loss, make_batch, paired_layouts)
    _, _, kl = _student_gradient(_compose("kl").loss, make_batch, paired_layouts)
    pairs = len(paired_layouts) // 2
    # On the student rows kl_mix adds exactly the gradient of a token-mean cross-entropy over both views' targets
    # (kl adds none there: see above), written here with torch's own shifted cross-entropy.
    logits = outputs.logits.detach().requires_grad_()
    vocab = logits.shape[-1]
    torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
    ).backward()
    torch.testing.assert_close(kl_mix[:pairs] - kl[:pairs], logits.grad[:pairs], rtol=1e-4, atol=1e-6)
