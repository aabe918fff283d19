"""Entry points of xmodal: each recipe composes the shipped Hydra configs and runs one job."""

import os

# A file path, not a module: an unrelated `conf` package on sys.path must not shadow the shipped configs.
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
