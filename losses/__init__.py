"""Loss terms for xmodal: weighted terms built from `conf/loss/*.yaml` by `_target_` (see losses/registry.py)."""

from xmodal.losses.base import LossContext
from xmodal.losses.registry import LossComposer, build_loss

__all__ = ["LossComposer", "LossContext", "build_loss"]
