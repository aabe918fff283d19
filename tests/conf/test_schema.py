"""Typed schemas of the user-facing values: a typo is one line naming key, value and the allowed values, raised as
soon as Hydra has composed the config (tests/conf/test_configs.py checks that every shipped option passes).
Composed in-process."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from xmodal.conf.schema import check_schema
from xmodal.core.errors import ConfigError
from xmodal.recipes import CONFIG_DIR, finetune
from tests.recipes.test_user_errors import assert_one_line_error, run_in_process


def composed(overrides: list[str], config_name: str = "config"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


TYPOS = {
    "finetune.mode=qlora": "finetune.mode='qlora' is not allowed: expected one of [full, lora]",
    "model.dtype=bf16": "model.dtype='bf16' is not allowed: expected one of [float32, bfloat16, float16]",
    "model.attn_implementation=flash": "model.attn_implementation='flash' is not allowed: expected one of "
    "[auto, sdpa, eager, flash_attention_2, flash_attention_3, flex_attention]",
    "deepspeed=zero2 deepspeed.zero_optimization.stage=4": "deepspeed.zero_optimization.stage=4 is not allowed: "
    "expected one of [0, 1, 2, 3]",
    "on_nonfinite_loss=ignore": "on_nonfinite_loss='ignore' is not allowed: expected one of [raise, skip]",
    "encoding.overlong=truncate": "encoding.overlong='truncate' is not allowed: expected one of [drop, error]",
    "packing=maybe": "packing='maybe' is not allowed: expected a value of type bool",
    "trainer.max_steps=ten": "trainer.max_steps='ten' is not allowed: expected a value of type int",
    "resume=yes": "resume='yes' is not a checkpoint directory: expected true, false, auto or a checkpoint directory",
}


@pytest.mark.parametrize("overrides", sorted(TYPOS))
def test_a_typo_names_key_value_and_the_allowed_values(overrides):
    with pytest.raises(ConfigError) as error:
        check_schema(composed(overrides.split()))
    assert str(error.value) == TYPOS[overrides]


def test_a_checkpoint_directory_and_auto_are_resume_values(tmp_path):
    check_schema(composed([f"resume={tmp_path}"]))
    check_schema(composed(["resume=auto"]))  # every shipped option passes: tests/conf/test_configs.py


def test_the_console_script_stops_at_composition_with_one_line(tmp_path, monkeypatch, capfd):
    argv = ["xmodal-train", "model=tiny_llava", "finetune.mode=qlora", f"output_dir={tmp_path / 'run'}"]
    try:
        status, err, output = run_in_process(finetune.main, argv, monkeypatch, capfd)
    finally:
        GlobalHydra.instance().clear()
    assert_one_line_error("xmodal-train", status, err, output, TYPOS["finetune.mode=qlora"])
    assert not (tmp_path / "run").exists()  # nothing ran: no run directory, no config.yaml
