"""Learning rates per component: the optimizer's parameter groups split by vision tower / projector / language model.

`optim.lr.<component>` (null: `trainer.learning_rate`) sets each component's rate; weight decay is left out of
the parameters the HF Trainer leaves it out of (biases and norms, `get_decay_parameter_names`). The groups are
built in `create_optimizer`, which the Trainer also calls under DeepSpeed ZeRO-2/3 when the DeepSpeed config
names no optimizer of its own, so the same groups reach DeepSpeed's wrapped optimizer.
"""

from __future__ import annotations

from xmodal.core.errors import ConfigError
from xmodal.trainers.models.finetuning import COMPONENTS, model_parts


def component_parameter_groups(
    model, learning_rates: dict[str, float], decay_names: set[str], weight_decay: float
) -> list[dict]:
    """One group per (component, decayed or not) that has trainable parameters; each names its `component`."""
    parts = model_parts(model)
    groups: dict[tuple[str, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((parts.component_of(name), name in decay_names), []).append(parameter)
    return [
        {
            "params": groups[(component, decayed)],
            "lr": learning_rates[component],
            "weight_decay": weight_decay if decayed else 0.0,
            "component": component,
        }
        for component in COMPONENTS
        for decayed in (True, False)
        if (component, decayed) in groups
    ]


class ComponentLearningRatesMixin:
    """Mix in before the `transformers.Trainer` subclass; `component_learning_rates` maps components to a rate or
    None (the Trainer's `learning_rate`)."""

    def __init__(self, *args, component_learning_rates: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        rates = component_learning_rates or {}
        unknown = sorted(set(rates) - set(COMPONENTS))
        if unknown:
            raise ConfigError(f"optim.lr: unknown component(s) {unknown}; choose from {list(COMPONENTS)}")
        self.component_learning_rates = {
            component: self.args.learning_rate if rates.get(component) is None else float(rates[component])
            for component in COMPONENTS
        }
        deepspeed = getattr(self.args, "hf_deepspeed_config", None)
        if deepspeed is not None and "optimizer" in deepspeed.config and any(v is not None for v in rates.values()):
            raise ConfigError(
                "optim.lr: the DeepSpeed config builds its own optimizer (an `optimizer` section, e.g. zero3_offload), "
                "which takes one learning rate; drop the per-component rates or that section"
            )

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = component_parameter_groups(
                opt_model,
                self.component_learning_rates,
                set(self.get_decay_parameter_names(opt_model)),
                self.args.weight_decay,
            )
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(
                self.args, opt_model
            )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)
