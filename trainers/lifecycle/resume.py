"""Restore a checkpoint's weights on resume, strictly: every weight the model saves is loaded, nothing else is there.

Why the Trainer's own loader is not enough: since transformers 5, `save_pretrained` writes weights under the
*original* checkpoint names of the architecture (it reverts the model's conversion mapping: LLaVA's
`model.language_model.*` is saved as `language_model.model.*`), while `Trainer._load_from_checkpoint` reads
`model.safetensors` with a plain `load_state_dict(strict=False)`. No name matches, every weight is reported
missing or unexpected, a warning is logged, and training continues from the base model.

Here the model's tensors are named exactly as `save_pretrained` names them (same tied-weight removal, same
reverted conversion), and the checkpoint's tensors are copied into them in place. Any missing, unexpected or
mis-shaped weight is a `CheckpointMismatchError`.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
from safetensors import safe_open
from transformers.core_model_loading import revert_weight_conversion
from transformers.modeling_utils import remove_tied_weights_from_state_dict
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from xmodal.core.errors import ConfigError

ADAPTER_SAFE_WEIGHTS_NAME = "adapter_model.safetensors"


class CheckpointMismatchError(ConfigError):
    """A checkpoint whose weights are not exactly the ones the model to resume saves."""


def is_peft_model(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def saved_weights(model) -> dict[str, torch.Tensor]:
    """The model's tensors under the names `save_pretrained` writes them, sharing storage with the model where renamed."""
    state_dict = model.state_dict()
    for key in model._keys_to_ignore_on_save or ():
        state_dict.pop(key, None)
    state_dict = remove_tied_weights_from_state_dict(state_dict, model)
    return revert_weight_conversion(model, state_dict)


def checkpoint_weight_files(checkpoint_dir: str, peft: bool) -> list[str]:
    """The safetensors files holding the checkpoint's model (or adapter) weights; [] where there are none."""
    if peft:
        path = os.path.join(checkpoint_dir, ADAPTER_SAFE_WEIGHTS_NAME)
        return [path] if os.path.isfile(path) else []
    single = os.path.join(checkpoint_dir, SAFE_WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(checkpoint_dir, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(checkpoint_dir, shard) for shard in shards]
    return []


def _checkpoint_keys(files: list[str]) -> dict[str, str]:
    """Weight name -> the file holding it."""
    located = {}
    for path in files:
        with safe_open(path, framework="pt") as handle:
            located.update(dict.fromkeys(handle.keys(), path))
    return located


def _require_same_keys(expected, found, checkpoint_dir: str, what: str) -> None:
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        differences = "; ".join(
            f"{len(names)} {kind}, e.g. {', '.join(names[:3])}"
            for kind, names in (("missing", missing), ("unexpected", unexpected))
            if names
        )
        raise CheckpointMismatchError(
            f"resume: {checkpoint_dir} does not hold the {what} of this run's model ({differences}); "
            "resume with the model and finetune settings that wrote it"
        )


def expected_checkpoint_keys(model) -> tuple[set[str], str]:
    """(weight names a checkpoint of `model` holds, what they are): adapter weights for PEFT, else all weights."""
    if is_peft_model(model):
        from peft import get_peft_model_state_dict

        return set(get_peft_model_state_dict(model)), "adapter weights"
    return set(saved_weights(model)), "weights"


def verify_checkpoint_weights(model, checkpoint_dir: str) -> None:
    """Raise unless the checkpoint's weight files name exactly the weights `model` saves.

    Checked before every resume, DeepSpeed ones included: DeepSpeed restores a PEFT model non-strictly.
    A DeepSpeed ZeRO-3 checkpoint saved without gathered 16-bit weights has no weight file to compare.
    """
    peft = is_peft_model(model)
    files = checkpoint_weight_files(checkpoint_dir, peft)
    if not files:
        if checkpoint_weight_files(checkpoint_dir, not peft):
            written, resuming = ("a full fine-tune", "a LoRA") if peft else ("a LoRA", "a full fine-tune")
            raise CheckpointMismatchError(
                f"resume: {checkpoint_dir} was written by {written} run; this run is {resuming} (finetune=...)"
            )
        return
    expected, what = expected_checkpoint_keys(model)
    _require_same_keys(expected, _checkpoint_keys(files), checkpoint_dir, what)


def load_full_weights(model, checkpoint_dir: str) -> None:
    """Copy every weight of a (non-PEFT) checkpoint into `model` in place, by the names `save_pretrained` used."""
    files = checkpoint_weight_files(checkpoint_dir, peft=False)
    if not files:
        raise CheckpointMismatchError(f"resume: {checkpoint_dir} holds no {SAFE_WEIGHTS_NAME} (or sharded index)")
    targets = saved_weights(model)
    located = _checkpoint_keys(files)
    _require_same_keys(targets, located, checkpoint_dir, "weights")
    model_storages = {tensor.untyped_storage().data_ptr() for tensor in model.state_dict().values()}
    with contextlib.ExitStack() as stack, torch.no_grad():
        handles = {path: stack.enter_context(safe_open(path, framework="pt")) for path in files}
        for name, target in targets.items():
            if target.untyped_storage().data_ptr() not in model_storages:
                # A conversion that fuses or splits tensors made a copy: writing into it would not reach the model.
                raise CheckpointMismatchError(
                    f"resume: {name!r} is converted (not renamed) between the checkpoint and the model; "
                    "this architecture cannot be resumed in place"
                )
            source = handles[located[name]].get_tensor(name)
            if source.shape != target.shape:
                raise CheckpointMismatchError(
                    f"resume: {checkpoint_dir} weight {name!r} has shape {tuple(source.shape)}, "
                    f"the model's has {tuple(target.shape)}"
                )
            target.copy_(source)
