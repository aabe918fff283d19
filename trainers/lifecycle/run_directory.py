"""The run directory (`output_dir`) of a training run: one run per directory, its own directory in a sweep.

`job_output_dir` gives each job of a Hydra multirun its own directory; `claim_output_dir` runs on every rank before
anything is written: it refuses a fresh run into a directory that holds another run's files (unless
`overwrite=true`), and returns the checkpoint to resume from (`resume=auto`: only a checkpoint of a run with this
command's settings; a start of that run killed before its first checkpoint begins afresh).
`open_output_dir` (rank 0, once every rank has claimed) deletes the old run's files when overwriting, clears the
PREEMPTED marker of the start before, and writes `config.yaml` with secrets redacted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys

from omegaconf import OmegaConf

from xmodal.core.atomic import atomic_write_text
from xmodal.core.errors import ConfigError
from xmodal.trainers.lifecycle.checkpoints import latest_complete_checkpoint, resolve_resume
from xmodal.trainers.lifecycle.preemption import PREEMPTED_MARKER

# What a run writes into its directory (checkpoint-N/ besides); the eval/ and imbalance/ defaults of xmodal-eval
# and xmodal-imbalance describe its final model, so they go with it.
RUN_ENTRIES = (
    "config.yaml", "metrics.jsonl", "final", ".final.staging", "adapter", "wandb", "tensorboard", "eval", "imbalance",
    PREEMPTED_MARKER,
)
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")
_SECRET_KEY = re.compile(r"api_?key|secret|password|(auth|access|hub|hf|wandb)_?token", re.IGNORECASE)
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REDACTED = "<redacted>"


def run_entries(output_dir: str) -> list[str]:
    """The names in `output_dir` that belong to a run, sorted."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if name in RUN_ENTRIES or _CHECKPOINT.match(name))


def sweep_subdirectory() -> str | None:
    """In a Hydra multirun, this job's swept overrides as `key=value,...` (one directory name); otherwise None.

    None too when `output_dir` itself is swept: each job already has its own. A sweep that the command line does
    not show (`hydra.sweeper.params`) falls back to the job number.
    """
    from hydra._internal.utils import get_args_parser  # Hydra's own parser for the command line it ran
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if not HydraConfig.initialized():  # composed in-process (hydra.compose in scripts and tests): a single job
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    parser = OverridesParser.create()
    command_line = get_args_parser().parse_args(sys.argv[1:]).overrides
    swept = {override.key_or_group for override in parser.parse_overrides(command_line) if override.is_sweep_override()}
    if "output_dir" in swept:
        return None
    job = parser.parse_overrides(list(hydra_cfg.overrides.task))
    parts = [f"{o.key_or_group}={o.get_value_element_as_str()}" for o in job if o.key_or_group in swept]
    name = ",".join(sorted(parts)) or f"job{hydra_cfg.job.num}"
    return name.replace(os.sep, "_")


def job_output_dir(output_dir: str) -> str:
    """This job's run directory: `output_dir`, or its own subdirectory of it in a Hydra sweep. The recipe records it
    in its config (`cfg.output_dir = job_output_dir(cfg.output_dir)`) before anything reads the directory."""
    subdirectory = sweep_subdirectory()
    return os.path.join(output_dir, subdirectory) if subdirectory else output_dir


def claim_output_dir(output_dir: str, resume: bool | str, overwrite: bool, resolved_config: dict) -> str | None:
    """The checkpoint in the job's `output_dir` that `resume` names (or None); refuses to mix two runs in one
    directory. `resume=auto` compares `resolved_config` (the run's config as a plain container) with the one the
    directory's run recorded.

    Every rank calls it before any rank writes into the directory, so all ranks decide alike.
    """
    resume_from = resolve_resume(resume, output_dir)
    if resume_from and resume == "auto":
        require_same_settings(output_dir, resolved_config)
    # A config.yaml alone is a run that stopped before training (a bad record, a model that did not load): the
    # corrected command may reuse the directory.
    found = [name for name in run_entries(output_dir) if name != "config.yaml"]
    if resume_from and overwrite:
        raise ConfigError("overwrite=true would delete the checkpoints resume= continues from: pass one of them")
    if found and not resume_from and not overwrite and not restarts_interrupted_run(output_dir, resume, resolved_config):
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise ConfigError(
            f"output_dir={output_dir} already holds a run ({shown}): resume=true continues it, overwrite=true "
            "deletes it and starts afresh, or choose another output_dir"
        )
    return resume_from


# Settings that may change between the starts of one run.
_RESTART_KEYS = ("resume", "overwrite")


def restarts_interrupted_run(output_dir: str, resume, resolved_config: dict) -> bool:
    """Whether `resume=auto` finds this same run (config.yaml with `resolved_config`'s settings) stopped before its
    first complete checkpoint and before final/: that start is begun afresh, its files replaced, so that one command
    still serves a job killed early (SIGKILL, a lost node) and its requeued start."""
    if resume != "auto" or latest_complete_checkpoint(output_dir) is not None:
        return False
    found = run_entries(output_dir)
    return "config.yaml" in found and "final" not in found and not differing_settings(output_dir, resolved_config)


def differing_settings(output_dir: str, resolved_config: dict) -> dict[str, tuple]:
    """{key: (recorded, current)} for each setting in which the run recorded in `output_dir`'s config.yaml differs
    from `resolved_config` (resume and overwrite are not settings of a run); empty without a config.yaml."""
    path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(path):
        return {}
    saved = _dotted(OmegaConf.to_container(OmegaConf.load(path)))
    current = _dotted(redact_secrets(resolved_config))
    return {key: (saved.get(key), current.get(key)) for key in sorted(saved.keys() | current.keys())
            if key.split(".", 1)[0] not in _RESTART_KEYS and saved.get(key) != current.get(key)}


def require_same_settings(output_dir: str, resolved_config: dict) -> None:
    """Refuse `resume=auto` into a directory whose config.yaml (written by its first start) has settings other than
    `resolved_config`'s: the checkpoint there belongs to another run, and continuing it would mix the two."""
    differing = differing_settings(output_dir, resolved_config)
    if differing:
        shown = ", ".join(f"{key}: {saved!r} -> {current!r}" for key, (saved, current) in list(differing.items())[:4])
        raise ConfigError(
            f"resume=auto: {os.path.join(output_dir, 'config.yaml')} belongs to a run with other settings ({shown}"
            f"{', ...' if len(differing) > 4 else ''}); choose another output_dir, or resume=true to continue "
            "that run with these settings"
        )


def _dotted(node, prefix: str = "") -> dict:
    """A nested config container as {"a.b.c": leaf}."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    return {
        dotted: leaf
        for key, value in node.items()
        for dotted, leaf in _dotted(value, f"{prefix}.{key}" if prefix else str(key)).items()
    }


def open_output_dir(output_dir: str, overwrite: bool, resolved_config: dict) -> None:
    """On rank 0: delete the previous run's files when `overwrite`, drop the PREEMPTED marker (this start is under
    way), then write `resolved_config` (the run's config as a plain container) to `config.yaml`, secrets redacted."""
    if overwrite:
        for name in run_entries(output_dir):
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output_dir, PREEMPTED_MARKER))
    atomic_write_text(os.path.join(output_dir, "config.yaml"), OmegaConf.to_yaml(redact_secrets(resolved_config)))


def redact_secrets(node):
    """A copy of a config container with API keys, tokens and passwords replaced by `<redacted>`.

    A value counts as secret when its key says so or when it equals a secret environment variable's value
    (a key passed under any name, e.g. `logger.env.KEY=${oc.env:WANDB_API_KEY}`).
    """
    secrets = {os.environ[name] for name in SECRET_ENV if os.environ.get(name)}
    if isinstance(node, dict):
        return {
            key: REDACTED if _SECRET_KEY.search(str(key)) and isinstance(value, str) and value else redact_secrets(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [redact_secrets(value) for value in node]
    return REDACTED if isinstance(node, str) and node in secrets else node
