"""Entry points of xmodal: each recipe composes the shipped Hydra configs and runs one job.

The recipes are the only code that reads the root config; what several of them read the same way is here.
"""

import contextlib
import os
import sys

# A file path, not a module: an unrelated `conf` package on sys.path must not shadow the shipped configs.
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")

# With WANDB_MODE=offline, importing transformers' integrations prints "[INFO] Running in WANDB offline mode" to
# stdout. Stdout carries what a command prints for pipes (`xmodal-train --cfg job > run.yaml`, xmodal-data's
# summary), so that import happens here, first, with its stdout sent to stderr.
if os.environ.get("WANDB_MODE") == "offline":
    with contextlib.redirect_stdout(sys.stderr):
        import transformers.integrations.integration_utils  # noqa: F401


# The library's imports happen inside these functions: `xmodal-list` and the config tests import this package for
# CONFIG_DIR alone and need not load torch.
def instances_of(cfg):
    """The run's checked instances: its `data` and `builder`, built with its seed, sized to its optimizer steps."""
    from xmodal.data_builders.instances import build_instances
    from xmodal.trainers.lifecycle.runs import examples_per_step

    return build_instances(cfg.data, cfg.builder, seed=cfg.seed, examples_per_step=examples_per_step(cfg.trainer))


def base_model(cfg) -> str:
    """The checkpoint the run starts from: `model.path`, or the tiny `model.init` built and cached once."""
    from xmodal.trainers.models import model_location

    return model_location(cfg.model, cfg.cache_dir, cfg.seed)


def claim_run_directory(cfg) -> str | None:
    """Fix the job's `output_dir` in the config (its sweep subdirectory in a multirun), claim it on this rank, and
    return the checkpoint to resume from."""
    from omegaconf import OmegaConf

    from xmodal.trainers.lifecycle.run_directory import claim_output_dir, job_output_dir

    cfg.output_dir = job_output_dir(cfg.output_dir)
    return claim_output_dir(cfg.output_dir, cfg.resume, cfg.overwrite, OmegaConf.to_container(cfg, resolve=True))


def open_run_directory(cfg, args) -> None:
    """Rank 0 writes the run's config.yaml into its directory (replacing the files of a start that
    `resume=auto` begins afresh); every rank checks the directories are shared."""
    from omegaconf import OmegaConf

    from xmodal.trainers.lifecycle.run_directory import restarts_interrupted_run
    from xmodal.trainers.lifecycle.runs import open_run

    resolved = OmegaConf.to_container(cfg, resolve=True)
    overwrite = cfg.overwrite or restarts_interrupted_run(cfg.output_dir, cfg.resume, resolved)
    open_run(args, cfg.output_dir, cfg.cache_dir, overwrite=overwrite, resolved_config=resolved)
