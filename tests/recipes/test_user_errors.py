"""Every console script reports a user error as one message on stderr with exit status 2, and no traceback.

Bad inputs written here as a new user would produce them: a malformed JSONL line, a missing and a truncated image,
a placeholder without its image, a conversation without an answer, config typos, a model that is not there. Most
cases call the real console script in-process (Hydra, the Trainer's argument checks and the data pipeline all run);
the cases that need a fresh environment (offline hub, DeepSpeed's launcher variables, torchrun) run the installed
command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from xmodal.core.errors import ConfigError
from xmodal.recipes import data, evaluate, finetune, imbalance, list as list_script
from xmodal.core.console import USER_ERROR_STATUS

FAST = ["debug=fast", "model=tiny_llava"]
BIN = os.path.dirname(sys.executable)


@pytest.fixture(autouse=True)
def _fresh_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, str]:
    """LLaVA JSONL files, each with one good record and one broken the way its name says."""
    folder = tmp_path_factory.mktemp("records")
    images = folder / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "ok.jpg")
    Image.new("RGB", (32, 32), "blue").save(images / "whole.jpg")
    (images / "cut.jpg").write_bytes((images / "whole.jpg").read_bytes()[:200])  # a download that stopped early
    good = {"id": "good", "image": "ok.jpg", "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]}
    broken = {
        "malformed": '{"id": "bad", "conversations": [{"from": "human", "value": "hi"}',
        "missing_image": {**good, "id": "bad", "image": "gone.jpg"},
        "truncated_image": {**good, "id": "bad", "image": "cut.jpg"},
        "placeholder_mismatch": {**good, "id": "bad", "conversations": [{"from": "human", "value": "<image> and <image>?"}, {"from": "gpt", "value": "Two."}]},
        "no_answer": {**good, "id": "bad", "conversations": [{"from": "human", "value": "<image>\nColour?"}]},
    }
    paths = {"images": str(images)}
    for name, record in broken.items():
        lines = [json.dumps(good), record if isinstance(record, str) else json.dumps(record)]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        paths[name] = str(folder / f"{name}.jsonl")
    return paths


def run_in_process(main, argv: list[str], monkeypatch, capfd) -> tuple[int, str, str]:
    """Run a console script's `main` as its command line would; returns (exit status, stderr, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capfd.readouterr()
    return exit_info.value.code, err, out + err


def assert_one_line_error(script: str, status: int, err: str, output: str, *fragments: str) -> None:
    assert status == USER_ERROR_STATUS, output
    assert "Traceback" not in output and "Error executing job" not in output, output
    message = err[err.index(f"{script}: error: ") :]
    assert err.count(f"{script}: error: ") == 1
    for fragment in fragments:
        assert fragment in message, (fragment, message)


DATA_ERRORS = {
    "malformed": ["malformed.jsonl", "line 2", "'<json>'", "Expecting"],
    "missing_image": ["missing_image.jsonl", "'bad'", "'image'", "gone.jpg", "not found"],
    "truncated_image": ["truncated_image.jsonl", "'bad'", "'image'", "cut.jpg", "unreadable image"],
    "placeholder_mismatch": ["placeholder_mismatch.jsonl", "'bad'", "2 image placeholders but 1 images"],
    "no_answer": ["no_answer.jsonl", "'bad'", "'messages'", "no assistant turn"],
}


@pytest.mark.parametrize("case", sorted(DATA_ERRORS))
def test_a_bad_record_is_one_message_naming_file_record_and_field(case, records, tmp_path, cache_dir, monkeypatch, capfd):
    argv = [
        "xmodal-train", *FAST, "data=llava_instruct", f"data.path={records[case]}", f"data.image_folder={records['images']}",
        f"output_dir={tmp_path / 'run'}",
    ]
    status, err, output = run_in_process(finetune.main, argv, monkeypatch, capfd)
    assert_one_line_error("xmodal-train", status, err, output, *DATA_ERRORS[case], "on_error=skip")


CONFIG_ERRORS = {
    "unknown_key": (["lr=0.1"], ["Could not override 'lr'", "+lr=0.1"]),
    "unknown_option": (["model=tiny_lava"], ["Could not find 'model/tiny_lava'", "tiny_llava_base"]),
    "not_a_training_argument": (["+trainer.learning_rte=0.1"], ["learning_rte", "TrainingArguments field"]),
    "bad_override_syntax": (["trainer.max_steps=[1"], ["trainer.max_steps=[1"]),
    "target_not_importable": (["+loss.terms.extra._target_=my_terms.Missing", "+loss.terms.extra.weight=1"], ["my_terms.Missing", "PYTHONPATH"]),
    "resume_without_checkpoint": (["resume=true"], ["resume=true", "holds no complete checkpoint", "without resume=true"]),
    "resume_path_missing": (["resume=nowhere/checkpoint-8"], ["nowhere/checkpoint-8", "not a checkpoint directory"]),
    "model_dir_missing": (["model.path=nowhere/tiny/final"], ["nowhere/tiny/final does not exist"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_a_config_that_cannot_work_is_one_message(case, tmp_path, cache_dir, monkeypatch, capfd):
    overrides, fragments = CONFIG_ERRORS[case]
    argv = ["xmodal-train", *FAST, "data.num_records=8", f"output_dir={tmp_path / 'run'}", *overrides]
    status, err, output = run_in_process(finetune.main, argv, monkeypatch, capfd)
    assert_one_line_error("xmodal-train", status, err, output, *fragments)


@pytest.mark.parametrize(
    "script, main, argv, fragments",
    [
        ("xmodal-eval", evaluate.main, [*FAST, "evaluate.checkpoints=[runs/none/final]"], ["runs/none/final does not exist"]),
        ("xmodal-imbalance", imbalance.main, [*FAST, "imbalance.spans=pixels"], ["imbalance.spans must be one of", "pixels"]),
        ("xmodal-data", data.main, [*FAST], ["out: say where to write"]),
        ("xmodal-data", data.main, [*FAST, "builder=pairs", "out=x.jsonl"], ["Could not find 'builder/pairs'"]),
        ("xmodal-list", lambda: list_script.main(sys.argv[1:]), ["losses"], ["no config group losses", "loss"]),
    ],
    ids=["eval", "imbalance", "data-no-out", "data-unknown-builder", "list"],
)
def test_every_console_script_reports_user_errors_the_same_way(script, main, argv, fragments, cache_dir, monkeypatch, capfd):
    status, err, output = run_in_process(main, [script, *argv], monkeypatch, capfd)
    assert_one_line_error(script, status, err, output, *fragments)


class ExplodingTerm:
    """A loss term whose constructor fails like a bug would: an unexpected error, not a user error."""

    def __init__(self):
        raise RuntimeError("a bug in a loss term")


def test_unexpected_errors_and_hydra_full_error_keep_the_traceback(tmp_path, cache_dir, monkeypatch, capfd):
    """The exception leaves `main` (Python prints its traceback) instead of becoming a one-line message."""
    argv = ["xmodal-train", *FAST, "data.num_records=8", f"output_dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", [*argv, f"+loss.terms.bug._target_={__name__}.ExplodingTerm"])
    with pytest.raises(RuntimeError, match="a bug in a loss term"):
        finetune.main()
    assert "xmodal-train: error:" not in capfd.readouterr().err

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", [*argv, "resume=true"])
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        finetune.main()
    assert os.environ["HYDRA_FULL_ERROR"] == "1"


def _command(script: str, args: list[str], cache_dir: str, timeout: int = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "XMODAL_CACHE": cache_dir, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([os.path.join(BIN, script), *args], env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_installed_command_says_the_hub_is_offline_and_refuses_contradicting_deepspeed_batch_sizes(tmp_path, cache_dir):
    # The hub is unreachable: the message says so and how to point model.path at a local copy.
    offline = _command("xmodal-train", [*FAST, "model=llava_1_5_7b", f"output_dir={tmp_path / 'a'}"], cache_dir)
    assert offline.returncode == USER_ERROR_STATUS
    assert offline.stderr.startswith("xmodal-train: error: model: 'llava-hf/llava-1.5-7b-hf' is not a local directory")
    assert "offline" in offline.stderr and "model.path=DIR" in offline.stderr and "Traceback" not in offline.stderr
    assert offline.stderr.count("\n") == 1, offline.stderr

    # A DeepSpeed config contradicting the batch settings stops before the model loads.
    mismatch = _command(
        "xmodal-train",
        [*FAST, "deepspeed=zero2", "deepspeed.train_micro_batch_size_per_gpu=4", f"output_dir={tmp_path / 'b'}"],
        cache_dir,
    )
    assert mismatch.returncode == USER_ERROR_STATUS, mismatch.stderr
    assert "ds train_micro_batch_size_per_gpu=4 vs hf per_device_train_batch_size=2" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_under_torchrun_one_rank_prints_and_every_rank_exits(records, tmp_path, cache_dir):
    args = [
        "--nproc_per_node=2", "--no-python", "xmodal-train", *FAST, "data=llava_instruct",
        f"data.path={records['missing_image']}", f"data.image_folder={records['images']}", f"output_dir={tmp_path / 'run'}",
    ]
    result = _command("torchrun", args, cache_dir, timeout=240)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count("xmodal-train: error: ") == 1, output
    assert "missing_image.jsonl" in output and "'bad'" in output
