"""`XModalGRPOTrainer`: TRL's `GRPOTrainer` plus the modality-gap alignment term and DAPO's group filter.

Rollouts are sampled from each row's `prompt` (the text-centric view in the paper's recipes) and the policy loss
(TRL's: `loss_type`, `epsilon`/`epsilon_high`, `beta`, ...) trains that branch only. Two additions:

- **Group filter** (`filter_equal_reward_groups`, DAPO's dynamic sampling): a group whose rollouts all got the
  same reward has zero advantage and no policy signal; its tokens are dropped from the loss and from the DAPO
  token normaliser, so they do not dilute the groups that teach something. DAPO then samples more prompts to
  refill the batch; here the batch simply holds fewer groups (`groups_kept` logs the share kept).
- **Alignment** (`RolloutAlignment`, paper 2's contrastive term): for every kept rollout with *full reward*
  (every reward component 1) whose row has a `vision_prompt`, a second forward of the same response tokens
  after the vision-centric prompt gives the student log-probs; the teacher is the text-centric log-prob of the
  same token from the policy forward of this very step, detached. Per token `d = log p_text - log p_vision`,
  k3 with the released clamps (`xmodal.losses.alignment.token_kl_estimates`), summed over those tokens and divided by
  their count over the whole generation batch (all ranks), i.e. a global token mean that does not change with
  the accumulation split, like DAPO's own normaliser. Both branches use TRL's log-prob path, so both are taken
  at the rollout temperature. The response follows the vision prompt directly, so its positions continue after
  that prompt's last position (left padding shifts a whole row, which rotary position embeddings do not see;
  Qwen2-VL's M-RoPE positions come from the model's `get_rope_index` over the concatenated row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Trainer
from trl import GRPOTrainer
from trl.trainer.utils import pad

from xmodal.losses.alignment import ESTIMATORS, token_kl_estimates
from xmodal.trainers.lifecycle.resilience import ResilientTrainingMixin
from xmodal.trainers.optimizer import ComponentLearningRatesMixin

# Processor outputs that are not per-token: concatenated across rows (the rest are per-token and left-padded).
_IMAGE_FIELDS = ("pixel_values", "image_grid_thw", "image_sizes")


@dataclass(frozen=True)
class RolloutAlignment:
    """The alignment term's settings: `weight` 0 switches it off; `estimator` k1/k2/k3; `clamp` the released bounds."""

    weight: float = 0.01
    estimator: str = "k3"
    clamp: bool = True

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"rl.align.estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.weight < 0:
            raise ValueError(f"rl.align.weight must be >= 0, got {self.weight}")


def full_reward_rows(rewards_per_func: torch.Tensor) -> torch.Tensor:
    """`[N]` bool: rollouts whose every reward component is 1 (the released recipe's "reward == 1")."""
    return torch.isclose(rewards_per_func, torch.ones_like(rewards_per_func), atol=1e-6).all(dim=1)


def varied_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """`[N / group_size]` bool: groups (consecutive rollouts of one prompt) whose rewards are not all equal."""
    grouped = rewards.view(-1, group_size)
    return ~torch.isclose(grouped, grouped[:, :1]).all(dim=1)


def masked_alignment_sum(student_logps, teacher_logps, mask, alignment: RolloutAlignment) -> torch.Tensor:
    """Sum over `mask`ed tokens of the per-token estimate (teacher detached inside `token_kl_estimates`)."""
    estimates = token_kl_estimates(student_logps, teacher_logps, alignment.estimator, alignment.clamp)
    return torch.where(mask.bool(), estimates, 0.0).sum()


class XModalGRPOTrainer(ResilientTrainingMixin, ComponentLearningRatesMixin, GRPOTrainer):
    """GRPO/DAPO with the alignment term and the group filter (module docstring); everything else is TRL's."""

    def __init__(self, *args, alignment: RolloutAlignment, filter_equal_reward_groups: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.alignment = alignment
        self.filter_equal_reward_groups = filter_equal_reward_groups
        self._rewards_per_func: torch.Tensor | None = None
        self._capture_policy_logps = False
        self._policy_logps: torch.Tensor | None = None

    # -- rollouts ---------------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Kept for the group filter and the alignment rows: `[N_global, F]`, gathered over ranks by TRL.
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        rewards_per_func = self._rewards_per_func
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        kept_groups = varied_reward_groups(rewards, group_size)
        if not self.filter_equal_reward_groups:
            kept_groups = torch.ones_like(kept_groups)
        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        kept_rows = kept_groups.repeat_interleave(group_size)[local]
        full_reward = full_reward_rows(rewards_per_func)
        self._metrics[mode]["groups_kept"].append(kept_groups.float().mean().item())
        self._metrics[mode]["full_reward"].append(full_reward.float().mean().item())

        if self.filter_equal_reward_groups:
            # TRL multiplies its loss mask (never the attention mask) by `tool_mask`: the filtered rows leave the
            # loss and the DAPO normaliser while their tokens stay in place (M-RoPE positions need them).
            kept = kept_rows.unsqueeze(1).to(output["completion_mask"])
            output["tool_mask"] = output.get("tool_mask", torch.ones_like(output["completion_mask"])) * kept
            loss_mask = output["completion_mask"] * output["tool_mask"]
            output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()

        if self.alignment.weight > 0:
            has_vision_view = torch.tensor([row.get("vision_prompt") is not None for row in inputs], device=kept_rows.device)
            aligned = full_reward[local] & kept_rows & has_vision_view
            output["align_rows"] = aligned
            output["vision_inputs"] = [self._encode_vision_prompt(row) for row in inputs]
            aligned_tokens = (output["completion_mask"] * aligned.unsqueeze(1)).sum()
            output["align_num_items"] = self.accelerator.gather(aligned_tokens).sum()
            self._metrics[mode]["aligned_rollouts"].append(self.accelerator.gather(aligned.float()).mean().item())
        return output

    def _encode_vision_prompt(self, row: dict) -> dict | None:
        """The vision-centric prompt of one row as model inputs (batch of 1), through the same chat template."""
        if row.get("vision_prompt") is None:
            return None
        messages = _with_images(row["vision_prompt"], row.get("vision_images") or [])
        encoded = self.processing_class.apply_chat_template(
            conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt", **self.chat_template_kwargs,
        )
        encoded.pop("attention_mask", None)
        # The Trainer's own input preparation (device, and DeepSpeed's dtype for floating inputs), as TRL's prompts get.
        return Trainer._prepare_inputs(self, dict(encoded))

    # -- loss -------------------------------------------------------------------------------------------------
    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._capture_policy_logps:  # the policy (text-branch) forward of `_compute_loss`: the teacher
            self._policy_logps = result[0].detach()
            self._capture_policy_logps = False
        return result

    def _compute_loss(self, model, inputs):
        if self.alignment.weight == 0 or "align_rows" not in inputs:
            return super()._compute_loss(model, inputs)
        self._capture_policy_logps = True
        policy_loss = super()._compute_loss(model, inputs)
        align_loss = self._alignment_loss(model, inputs, self._policy_logps)
        self._policy_logps = None
        return policy_loss + self.alignment.weight * align_loss

    def _alignment_loss(self, model, inputs, teacher_logps: torch.Tensor) -> torch.Tensor:
        """Alignment on this micro-batch's full-reward rollouts, normalised over the generation batch."""
        aligned = inputs["align_rows"]
        rows = aligned.nonzero().flatten().tolist()
        # Every rank runs exactly one student forward per micro-batch (a collective under ZeRO-3); a rank with
        # no full-reward rollout runs it on its first row with weight 0.
        rows_to_run = rows or [next(i for i, v in enumerate(inputs["vision_inputs"]) if v is not None)]
        completion_ids = inputs["completion_ids"][rows_to_run]
        completion_mask = inputs["completion_mask"][rows_to_run]
        vision = _collate_vision_prompts([inputs["vision_inputs"][i] for i in rows_to_run], self._tokenizer.pad_token_id)
        prompt_ids, prompt_mask = vision.pop("input_ids"), vision.pop("prompt_mask")
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in vision:  # per-token fields cover the prompt; the response has none of them
                vision[key] = torch.cat([vision[key], vision[key].new_zeros(completion_ids.shape)], dim=1)
        student_logps, _, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
            num_images=vision.pop("num_images"),
            **vision,
        )
        mask = completion_mask.bool() & aligned[rows_to_run].unsqueeze(1)
        summed = masked_alignment_sum(student_logps, teacher_logps[rows_to_run], mask, self.alignment)
        # As TRL's DAPO normaliser: the generation batch's count, rescaled to one accumulation window per rank.
        normalizer = inputs["align_num_items"].clamp(min=1.0) / self.accelerator.num_processes
        normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        mode = "train" if self.model.training else "eval"
        token_sum = torch.stack([summed.detach(), mask.sum().float()])
        totals = self.accelerator.reduce(token_sum, reduction="sum")
        if totals[1] > 0:  # steps without a full-reward rollout anywhere log nothing rather than a 0
            self._metrics[mode]["align_loss"].append((totals[0] / totals[1]).item())
        return summed / normalizer


def _with_images(messages: list[dict], images: list) -> list[dict]:
    """`messages` with the row's images put into their `{"type": "image"}` parts, in order."""
    remaining = iter(images)
    filled = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{**part, "image": next(remaining)} if part["type"] == "image" else part for part in content]
        filled.append({**message, "content": content})
    return filled


def _collate_vision_prompts(encoded_rows: list[dict], pad_token_id: int) -> dict:
    """Left-padded `input_ids` + `prompt_mask`, per-token fields left-padded with 0, image fields concatenated."""
    ids = [row["input_ids"][0] for row in encoded_rows]
    batch = {
        "input_ids": pad(ids, padding_value=pad_token_id, padding_side="left"),
        "prompt_mask": pad([torch.ones_like(i) for i in ids], padding_value=0, padding_side="left"),
        "num_images": [_num_images(row) for row in encoded_rows],
    }
    for key in encoded_rows[0]:
        if key == "input_ids":
            continue
        values = [row[key] for row in encoded_rows]
        if key in _IMAGE_FIELDS:
            batch[key] = torch.cat(values, dim=0)
        else:
            batch[key] = pad([v[0] for v in values], padding_value=0, padding_side="left")
    return batch


def _num_images(encoded_row: dict) -> int:
    """Images of one encoded prompt: one grid row each (Qwen2-VL), else one pixel tensor each (LLaVA)."""
    if "image_grid_thw" in encoded_row:
        return int(encoded_row["image_grid_thw"].size(0))
    return int(encoded_row["pixel_values"].size(0)) if "pixel_values" in encoded_row else 0
