"""Loss terms for xmodal: a registry of weighted terms built from `conf/loss/*.yaml` (see losses/registry.py)."""

from losses.base import LossContext
from losses.registry import LossComposer, build_loss, register_loss, registered_losses

# Imported for their registrations: each module registers its terms with `register_loss`.
from losses import alignment, lm  # noqa: E402,F401  isort: skip

__all__ = ["LossComposer", "LossContext", "build_loss", "register_loss", "registered_losses"]
