"""Entry points of xmodal: each recipe composes the shipped Hydra configs and runs one job."""

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
