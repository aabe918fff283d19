"""`XModalGRPOTrainer`: TRL's `GRPOTrainer` plus the modality-gap alignment term and DAPO's group filter.

Rollouts are sampled from each row's `prompt` (the text-centric view in the paper's recipes) and the policy loss
(TRL's: `loss_type`, `epsilon`/`epsilon_high`, `beta`, ...) trains that branch only. Two additions:

- **Group filter** (`filter_equal_reward_groups`, DAPO's dynamic sampling): a group whose rollouts all got the
  same reward has zero advantage and no policy signal; its tokens are dropped from the loss and from the DAPO
  token normaliser, so they do not dilute the groups that teach something (`groups_kept` logs the share kept).
- **Refill** (`RolloutRefill`, the rest of DAPO's dynamic sampling): while the rollout batch holds fewer
  informative groups than prompts, further prompts are drawn from the training set, rolled out and scored, and
  their informative groups take the places of filtered ones, for at most `max_rounds` rounds (`refill_rounds`
  logs them). Each rank replaces its own groups (its rollouts must be whole groups); the rounds stop for all ranks
  at once, on the gathered count. Advantages stay those of each group's own round (they are group-relative).
- **Shaping rewards** (`shaping_rewards`, e.g. DAPO's overlong penalty): reward components that count in the
  reward and the filter but not in "full reward", as the release keys its alignment on the task score alone.
- **Alignment** (`RolloutAlignment`, paper 2's contrastive term): for every kept rollout with *full reward*
  (every reward component 1) whose row has a `vision_prompt`, a second forward of the same response tokens
  after the vision-centric prompt gives the student log-probs; the teacher is the text-centric log-prob of the
  same token from the policy forward of this very step, detached. The term itself (per token
  `d = log p_text - log p_vision`, k3 with the released clamps, normalised as `rl.align.normalize` says: the
  released per-micro-batch token mean, or one token mean over the generation batch) is
  `xmodal.losses.alignment`'s RL half; this class wires it into TRL. Both branches use TRL's log-prob path, so both are taken
  at the rollout temperature. The response follows the vision prompt directly, so its positions continue after
  that prompt's last position (left padding shifts a whole row, which rotary position embeddings do not see;
  Qwen2-VL's M-RoPE positions come from the model's `get_rope_index` over the concatenated row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Trainer
from trl import GRPOTrainer
from trl.trainer.utils import pad, split_pixel_values_by_grid, unsplit_pixel_values_by_grid

from xmodal.losses.alignment import (
    RolloutAlignment,
    full_reward_rows,
    inside_released_clamps,
    rollout_alignment_loss,
    rollout_alignment_sum,
)
from xmodal.trainers.lifecycle.resilience import ResilientTrainingMixin
from xmodal.trainers.optimizer import ComponentLearningRatesMixin

# Processor outputs that are not per-token: concatenated across rows (the rest are per-token and left-padded).
_IMAGE_FIELDS = ("pixel_values", "image_grid_thw", "image_sizes")
# Per-token fields of a rollout batch that cover the prompt (left-padded); the other per-token fields cover the
# completion (right-padded).
_PROMPT_FIELDS = ("prompt_ids", "prompt_mask", "mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class RolloutRefill:
    """DAPO's refill (module docstring): `enabled`, and `max_rounds` extra generation rounds per rollout batch."""

    enabled: bool = False
    max_rounds: int = 4

    def __post_init__(self):
        if self.max_rounds < 0:
            raise ValueError(f"rl.refill.max_rounds must be >= 0, got {self.max_rounds}")


def varied_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """`[N / group_size]` bool: groups (consecutive rollouts of one prompt) whose rewards are not all equal."""
    grouped = rewards.view(-1, group_size)
    return ~torch.isclose(grouped, grouped[:, :1]).all(dim=1)


class XModalGRPOTrainer(ResilientTrainingMixin, ComponentLearningRatesMixin, GRPOTrainer):
    """GRPO/DAPO with the alignment term and the group filter (module docstring); everything else is TRL's."""

    def __init__(
        self,
        *args,
        alignment: RolloutAlignment,
        filter_equal_reward_groups: bool = True,
        refill: RolloutRefill = RolloutRefill(),
        shaping_rewards: tuple[str, ...] = (),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if refill.enabled and not filter_equal_reward_groups:
            raise ValueError("rl.refill.enabled needs rl.filter_equal_reward_groups: true (refill replaces filtered groups)")
        self.alignment = alignment
        self.filter_equal_reward_groups = filter_equal_reward_groups
        self.refill = refill
        # The reward columns that decide "full reward": all but the shaping ones.
        self._task_reward_columns = [i for i, name in enumerate(self.reward_func_names) if name not in shaping_rewards]
        self._refill_order: list[int] = []
        self._refill_generator = torch.Generator().manual_seed(self.args.seed + self.accelerator.process_index)
        self._rewards_per_func: torch.Tensor | None = None
        self._capture_policy_logps = False
        self._policy_logps: torch.Tensor | None = None

    # -- rollouts ---------------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Kept for the group filter and the alignment rows: `[N_global, F]`, gathered over ranks by TRL.
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        output, kept_rows = self._score_rollouts(inputs, mode)
        if self.refill.enabled and mode == "train":
            output, kept_rows = self._refill(inputs, output, kept_rows)
        if self.filter_equal_reward_groups:
            # TRL multiplies its loss mask (never the attention mask) by `tool_mask`: the filtered rows leave the
            # loss and the DAPO normaliser while their tokens stay in place (M-RoPE positions need them).
            kept = kept_rows.unsqueeze(1).to(output["completion_mask"])
            output["tool_mask"] = output.get("tool_mask", torch.ones_like(output["completion_mask"])) * kept
            loss_mask = output["completion_mask"] * output["tool_mask"]
            output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        # Every group has as many rows, so the share of kept rows is the share of kept groups.
        self._metrics[mode]["groups_kept"].append(self.accelerator.gather(kept_rows.float()).mean().item())
        if "align_rows" in output:
            aligned = output["align_rows"]
            output["align_num_items"] = self.accelerator.gather((output["completion_mask"] * aligned.unsqueeze(1)).sum()).sum()
            self._metrics[mode]["aligned_rollouts"].append(self.accelerator.gather(aligned.float()).mean().item())
        return output

    def _score_rollouts(self, inputs, mode: str) -> tuple[dict, torch.Tensor]:
        """TRL's rollouts and scores of `inputs`, with the alignment rows; and which of this rank's rows belong to
        informative groups."""
        output = super()._generate_and_score_completions(inputs)
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        rewards_per_func = self._rewards_per_func
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        kept_groups = varied_reward_groups(rewards, group_size)
        if not self.filter_equal_reward_groups:
            kept_groups = torch.ones_like(kept_groups)
        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        kept_rows = kept_groups.repeat_interleave(group_size)[local]
        full_reward = full_reward_rows(rewards_per_func[:, self._task_reward_columns])
        self._metrics[mode]["full_reward"].append(full_reward.float().mean().item())
        if self.alignment.weight > 0:
            has_vision_view = torch.tensor([row.get("vision_prompt") is not None for row in inputs], device=kept_rows.device)
            output["align_rows"] = full_reward[local] & kept_rows & has_vision_view
            output["vision_inputs"] = [self._encode_vision_prompt(row) for row in inputs]
        return output, kept_rows

    # -- refill -----------------------------------------------------------------------------------------------
    def _refill(self, inputs, output: dict, kept_rows: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Informative groups of further prompts in the places of filtered ones, until none is left (all ranks) or
        `max_rounds` rounds have run."""
        group_size = self.num_generations
        if len(inputs) % group_size:
            raise ValueError(
                f"rl.refill needs whole groups on each rank: {len(inputs)} rollouts per rank is not a multiple of "
                f"rl.grpo.num_generations={group_size} (trainer.per_device_train_batch_size x steps_per_generation)"
            )
        kept_groups = kept_rows.view(-1, group_size)[:, 0]
        rounds = 0
        while rounds < self.refill.max_rounds and not bool(self.accelerator.gather(kept_groups).all()):
            rounds += 1
            extra_inputs = self._further_prompts(len(inputs) // group_size)
            extra, extra_kept = self._score_rollouts(extra_inputs, "train")
            filtered = (~kept_groups).nonzero().flatten().tolist()
            replacements = extra_kept.view(-1, group_size)[:, 0].nonzero().flatten().tolist()[: len(filtered)]
            if replacements:
                output = _replace_groups(output, extra, filtered[: len(replacements)], replacements, group_size,
                                         self._tokenizer.pad_token_id)
                kept_groups = kept_groups.clone()
                kept_groups[filtered[: len(replacements)]] = True
        self._metrics["train"]["refill_rounds"].append(float(rounds))
        return output, kept_groups.repeat_interleave(group_size)

    def _further_prompts(self, prompts: int) -> list[dict]:
        """`prompts` rows of the training set (a seeded walk through it, per rank), each repeated for its group."""
        rows = []
        while len(rows) < prompts:
            if not self._refill_order:
                self._refill_order = torch.randperm(len(self.train_dataset), generator=self._refill_generator).tolist()
            rows.append(self.train_dataset[self._refill_order.pop()])
        return [row for row in rows for _ in range(self.num_generations)]

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
        summed = rollout_alignment_sum(student_logps, teacher_logps[rows_to_run], mask, self.alignment)
        mode = "train" if self.model.training else "eval"
        inside = inside_released_clamps(student_logps, teacher_logps[rows_to_run], self.alignment.estimator) & mask
        token_sum = torch.stack([summed.detach(), mask.sum().float(), inside.sum().float()])
        totals = self.accelerator.reduce(token_sum, reduction="sum")
        if totals[1] > 0:  # steps without a full-reward rollout anywhere log nothing rather than a 0
            self._metrics[mode]["align_loss"].append((totals[0] / totals[1]).item())
            # the share of aligned tokens the (released, clamped) term can move: none where a clamp binds
            self._metrics[mode]["align_inside_clamp"].append((totals[2] / totals[1]).item())
        # As TRL's DAPO normaliser: the generation batch's count, rescaled to one accumulation window per rank.
        tokens_per_window = inputs["align_num_items"].clamp(min=1.0) / self.accelerator.num_processes
        tokens_per_window = tokens_per_window * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return rollout_alignment_loss(
            summed, mask.sum(), self.alignment.normalize, tokens_per_window=tokens_per_window,
            accumulation_steps=self.current_gradient_accumulation_steps if mode == "train" else 1,
        )


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


def _replace_groups(output: dict, extra: dict, targets: list[int], sources: list[int], group_size: int, pad_id: int) -> dict:
    """`output` whose groups `targets` are `extra`'s groups `sources` (rows of a rollout batch; image fields split per
    row as TRL splits them, per-token fields padded to a common width first)."""
    output, extra = split_pixel_values_by_grid(output), split_pixel_values_by_grid(extra)
    rows = len(output["completion_ids"])
    taken = dict(zip((t * group_size + i for t in targets for i in range(group_size)),
                     (s * group_size + i for s in sources for i in range(group_size))))
    merged = {}
    for key, value in output.items():
        other = extra.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) == rows:
            if value.dim() == 2:
                side = "left" if key in _PROMPT_FIELDS else "right"
                fill = pad_id if key in ("prompt_ids", "completion_ids") else 0
                width = max(value.size(1), other.size(1))
                value, other = (_pad_to(v, width, side, fill) for v in (value, other))
            value = value.clone()
            value[list(taken)] = other[list(taken.values())].to(value)
        elif isinstance(value, list) and len(value) == rows:
            value = [extra[key][taken[i]] if i in taken else v for i, v in enumerate(value)]
        merged[key] = value  # scalars (the normalisers) are recomputed by the caller
    return unsplit_pixel_values_by_grid(merged)


def _pad_to(tensor: torch.Tensor, width: int, side: str, fill) -> torch.Tensor:
    missing = width - tensor.size(1)
    if missing == 0:
        return tensor
    padding = tensor.new_full((tensor.size(0), missing), fill)
    return torch.cat([padding, tensor] if side == "left" else [tensor, padding], dim=1)
