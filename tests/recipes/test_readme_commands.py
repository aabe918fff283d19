"""Every command in README.md's bash blocks runs as written, so the README cannot drift from the code.

The commands run in README order in one scratch working directory (later commands use what earlier ones wrote),
through bash as a user would type them, with overrides appended that shorten each run to seconds. The files the
README asks the reader to create (a block whose first line is `# <path>`) are written from the README itself. At
the end every file the commands wrote must be ignored by the repository's .gitignore.

When you add a README command: a console-script command needs nothing here; a command that cannot run on a CPU
test machine goes into SKIPPED with the reason; a new console script gets its fast overrides in FAST_OVERRIDES.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PGPS9K_SAMPLE = os.environ.get("XMODAL_PGPS9K_SAMPLE", str(REPO.parent / "shared" / "data" / "pgps9k_sample"))

# Commands (by how they start, environment assignments aside) that a CPU test does not run, and why.
SKIPPED = {
    "pip install": "installs xmodal: the test runs this checkout",
    "python -m pytest": "the test suite itself",
    "torchrun --nproc_per_node 8": "8 GPUs and a 7B model",
    "deepspeed --num_gpus 8": "8 GPUs and a 7B model",
    "python scripts/bench_": "benchmarks: minutes of timing, no pass or fail",
    "python scripts/reproduce.py": "the reproduction: an hour of CPU (tests/scripts/test_reproduce.py runs its --quick mode)",
}
# Commands that name the papers' real models or a user's own data: a 7B checkpoint and GPUs, or files not shipped.
SKIPPED_WORDS = {
    "setting=paper": "the paper's real model and hyperparameters: a 7B checkpoint and GPUs",
    "/path/to/": "the user's own copy of a dataset",
    "=/data/": "the user's own copy of a dataset",
    "data.path=HuggingFaceH4/": "a Hub dataset: downloads",
}
# Appended to every command of a console script (a later override wins over the README's own).
FAST_OVERRIDES = {
    "xmodal-train": ["debug=fast", "trainer.max_steps=4"],
    "xmodal-eval": ["evaluate.per_condition=4", "evaluate.max_new_tokens=4"],
    "xmodal-imbalance": ["imbalance.per_condition=2"],
    "xmodal-data": [],
    "xmodal-rl": ["trainer.max_steps=2", "rl.grpo.num_generations=4", "trainer.per_device_train_batch_size=8",
                  "rl.grpo.max_completion_length=6"],
}
# Appended when a command keeps the default synthetic data: fewer records to render and tokenize.
SYNTHETIC_OVERRIDES = ["data.num_records=64"]
# README paths that name this machine's layout, and where that is from the test's working directory.
PATHS = {"../shared/data/pgps9k_sample": PGPS9K_SAMPLE}

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_FILE_HEADER = re.compile(r"^# ([\w./-]+\.(?:py|yaml))\b")


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(match.group(1), match.group(2)) for match in _FENCE.finditer(text)]


def readme_commands(text: str) -> list[str]:
    """The commands of the bash blocks: continuation lines joined, `a && b` split, comments dropped."""
    commands = []
    for language, body in readme_blocks(text):
        if language != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


def readme_files(text: str) -> dict[str, str]:
    """The files the README asks the reader to write: blocks whose first line is `# <path>...`."""
    files = {}
    for language, body in readme_blocks(text):
        match = _FILE_HEADER.match(body)
        if language != "bash" and match:
            files[match.group(1)] = body
    return files


def skip_reason(command: str) -> str | None:
    words = [word for word in shlex.split(command) if not re.match(r"^[A-Z_]+=", word)]
    line = " ".join(words)
    missing = [path for readme_path, path in PATHS.items() if readme_path in command and not os.path.exists(path)]
    if missing:
        return f"{missing[0]} not found"
    by_word = next((reason for word, reason in SKIPPED_WORDS.items() if word in line), None)
    return by_word or next((reason for prefix, reason in SKIPPED.items() if line.startswith(prefix)), None)


def console_script(command: str) -> str:
    words = [word for word in shlex.split(command) if not re.match(r"^[A-Z_]+=", word)]
    return words[words.index("--no-python") + 1] if words[0] == "torchrun" else words[0]


def shortened(command: str) -> str:
    """The command with this machine's paths and the fast overrides of its console script."""
    script = console_script(command)
    if script not in FAST_OVERRIDES:
        pytest.fail(f"README runs {script!r}: add its fast overrides to FAST_OVERRIDES, or the command to SKIPPED")
    for readme_path, local_path in PATHS.items():
        command = command.replace(readme_path, local_path)
    overrides = list(FAST_OVERRIDES[script])
    if not any(word.startswith("data=") for word in shlex.split(command)):
        overrides += SYNTHETIC_OVERRIDES
    return " ".join([command, *map(shlex.quote, overrides)])


def test_readme_parsing_finds_the_commands_and_files():
    text = (REPO / "README.md").read_text()
    commands = readme_commands(text)
    assert "xmodal-train output_dir=runs/a resume=true" in commands
    assert any(command.startswith("xmodal-imbalance builder=conflict") and "imbalance.spans=evidence" in command for command in commands)
    assert set(readme_files(text)) == {"my_terms.py", "my_conf/loss/lm_entropy.yaml"}
    assert skip_reason('pip install "torch==2.13.0" .') and not skip_reason("xmodal-train")
    assert shortened("xmodal-train builder=paired") == "xmodal-train builder=paired debug=fast trainer.max_steps=4 data.num_records=64"


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path, cache_dir):
    text = (REPO / "README.md").read_text()
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / ".gitignore", work / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    for path, content in readme_files(text).items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(content)
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(XMODAL_CACHE=cache_dir, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    ran = []
    for command in readme_commands(text):
        if skip_reason(command):
            continue
        line = shortened(command)
        result = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "Traceback" not in output, f"{line}\n{output[-6000:]}"
        ran.append(command)
    assert len(ran) >= 10

    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=work, capture_output=True, text=True)
    untracked = sorted(line[3:] for line in status.stdout.splitlines())
    assert untracked == sorted([".gitignore", *readme_files(text)]), "outputs not covered by .gitignore"
