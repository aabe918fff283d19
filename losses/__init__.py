"""Loss terms for xmodal: weighted terms built from `conf/loss/*.yaml` by `_target_` (see losses/registry.py)."""

from losses.base import LossContext
from losses.registry import LossComposer, build_loss

__all__ = ["LossComposer", "LossContext", "build_loss"]
