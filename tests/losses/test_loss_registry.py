"""Building losses from config: the shipped YAMLs, weights and warm-up, and clear errors."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from xmodal.losses import LossContext, build_loss
from xmodal.losses.registry import WeightedTerm
from xmodal.recipes import CONFIG_DIR

CONF_DIR = Path(CONFIG_DIR)
LOSS_CONFIGS = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))


class ConstantLoss:
    """A term outside the registry, reachable through `_target_`."""

    def __init__(self, value: float = 2.0):
        self.value = value

    def __call__(self, ctx):
        return torch.tensor(self.value)


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_every_shipped_loss_config_composes_and_builds(name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(overrides=[f"+loss={name}"])
    composer = build_loss(cfg.loss)
    assert "lm_loss" in [entry.name for entry in composer.terms]
    assert (CONF_DIR / "loss" / f"{name}.yaml").read_text().startswith("# ")


def test_shipped_kl_config_is_the_papers_setting():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(overrides=["+loss=lm_kl"])
    align = next(entry for entry in build_loss(cfg.loss).terms if entry.name == "align_loss")
    assert (align.weight, align.term.kind, align.term.estimator) == (0.01, "token", "k3")


def test_composer_sums_weighted_terms_logs_unweighted_and_warms_up(make_batch, paired_layouts):
    composer = build_loss(
        {
            "terms": {
                "lm": {"_target_": "xmodal.losses.lm.LMLoss"},
                "align": {"_target_": "xmodal.losses.alignment.AlignmentLoss", "weight": 0.5, "warmup_steps": 4, "estimator": "k2"},
                "const": {"_target_": f"{__name__}.ConstantLoss", "weight": 3.0, "name": "constant"},
                "dropped": None,
            }
        }
    )
    batch, outputs = make_batch(paired_layouts, paired=True)
    for step, align_weight in [(0, 0.0), (2, 0.25), (4, 0.5), (40, 0.5)]:
        total, logged = composer(LossContext(model=None, batch=batch, outputs=outputs, global_step=step))
        assert set(logged) == {"lm_loss", "align_loss", "constant"}
        assert not any(value.requires_grad for value in logged.values())
        expected = logged["lm_loss"] + align_weight * logged["align_loss"] + 3.0 * 2.0
        torch.testing.assert_close(total.detach(), expected)
    assert not composer.needs_hidden_states
    assert build_loss({"terms": {"align": {"_target_": "xmodal.losses.alignment.AlignmentLoss", "kind": "hidden"}}}).needs_hidden_states


def test_a_target_that_does_not_import_names_the_term_and_the_path():
    with pytest.raises(ValueError, match=r"loss term 'align': cannot import `_target_` 'xmodal.losses.alignment.KLLoss'"):
        build_loss({"terms": {"align": {"_target_": "xmodal.losses.alignment.KLLoss"}}})


def test_unknown_option_lists_accepted_options():
    with pytest.raises(ValueError, match=r"unknown option\(s\) estimater.*accepts: .*estimator"):
        build_loss({"terms": {"align": {"_target_": "xmodal.losses.alignment.AlignmentLoss", "estimater": "k3"}}})


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"terms": {"lm": {"weight": 1.0}}}, "needs a `_target_`"),
        ({"terms": {}}, "at least one term"),
        ({"lm": {"_target_": "xmodal.losses.lm.LMLoss"}}, "needs a `terms` mapping"),
        ({"terms": {"a": {"_target_": "xmodal.losses.lm.LMLoss", "name": "x"}, "b": {"_target_": "xmodal.losses.lm.LMLoss", "name": "x"}}}, "repeated: x"),
    ],
)
def test_malformed_configs_fail_clearly(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_loss(cfg)


def test_weight_is_constant_without_warmup():
    entry = WeightedTerm(name="x", term=ConstantLoss(), weight=0.3)
    assert entry.weight_at(0) == entry.weight_at(10_000) == 0.3
