"""The modality-gap alignment loss: pull the vision-centric (student) view towards the text-centric (teacher) one.

Pure functions hold the math (`token_kl`, `full_kl`, `hidden_alignment` and their unreduced forms); both halves of
the term apply them (docs/research-brief.md, section 2):
- supervised: the registered `AlignmentLoss` term, on the paired rows of a batch (`loss=lm_kl` etc.);
- RL: `RolloutAlignment` (`rl.align`) and `rollout_alignment_loss`, on the full-reward rollouts that
  `xmodal.trainers.grpo.XModalGRPOTrainer` re-scores after the vision-centric prompt.
Both share the option names (`weight`, `estimator`, `clamp`), their checks, and one failure: without paired data
(both views of a record) the term raises `ConfigError` (`require_pairs`) instead of silently adding 0.
In every function the teacher is a constant: its inputs are detached inside, so gradient reaches the student only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from xmodal.core.errors import ConfigError
from xmodal.losses.base import LossContext, target_logprobs
from xmodal.losses.teacher import FrozenTeacher

ESTIMATORS = ("k1", "k2", "k3")
DIRECTIONS = ("forward", "reverse", "js")
METRICS = ("cosine", "mse")
KINDS = ("token", "full", "hidden")
TEACHERS = ("same", "frozen")
NORMALIZATIONS = ("release", "global")  # the RL half's normaliser (see rollout_alignment_loss)


def check_choices(scope: str, **options: tuple[str, tuple[str, ...]]) -> None:
    """ValueError naming `scope.option`, its value and the allowed values, for the first option not allowed."""
    for option, (value, choices) in options.items():
        if value not in choices:
            raise ValueError(f"{scope}.{option} must be one of {choices}, got {value!r}")


def require_pairs(paired: bool, scope: str) -> None:
    """The term's one failure without paired data, in both halves: a training run it would silently not align."""
    if not paired:
        raise ConfigError(
            f"{scope}: the alignment term needs both views of each record: use builder=paired builder.emit=both "
            "(or switch the term off)"
        )


# -- token level: only the target token's log-probability per position -----------------------------
# The released recipe's bounds (its k3 term, verl's `low_var_kl`): d is clamped to [-20, 20] before the estimate
# and the estimate to [-10, 10] after it. On the tokens the vision-centric view cannot read, d is large and the
# unclamped k3 gradient 1 - exp(d) grows without bound; where a bound binds, the gradient is zero (torch.clamp).
RELEASED_LOG_RATIO_BOUND = 20.0
RELEASED_ESTIMATE_BOUND = 10.0


def token_kl_estimates(student_logprobs, teacher_logprobs, estimator: str = "k3", clamp: bool = True) -> torch.Tensor:
    """Per-token KL estimates from the target token's log-probs; with d = teacher - student:

    k1 = d, k2 = d**2 / 2, k3 = exp(d) - d - 1 (non-negative, low variance; the released recipe's choice).
    `clamp` applies the released bounds (d to +-RELEASED_LOG_RATIO_BOUND, the estimate to
    +-RELEASED_ESTIMATE_BOUND) to whichever estimator; False gives the raw estimate.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    d = teacher_logprobs.detach().float() - student_logprobs.float()
    if clamp:
        d = d.clamp(-RELEASED_LOG_RATIO_BOUND, RELEASED_LOG_RATIO_BOUND)
    if estimator == "k1":
        estimate = d
    elif estimator == "k2":
        estimate = d.square() / 2
    else:
        estimate = torch.expm1(d) - d  # exp(d) - 1 - d without cancellation for small d
    if clamp:
        estimate = estimate.clamp(-RELEASED_ESTIMATE_BOUND, RELEASED_ESTIMATE_BOUND)
    return estimate


def token_kl(student_logprobs, teacher_logprobs, mask, estimator="k3", clamp=True) -> torch.Tensor:
    """Mean over `mask`ed tokens of the `estimator` KL estimate (see `token_kl_estimates`); teacher detached."""
    return _masked_mean(token_kl_estimates(student_logprobs, teacher_logprobs, estimator, clamp), mask)


# -- full vocabulary ------------------------------------------------------------------------------
def full_kl_per_position(student_logits, teacher_logits, direction="forward", temperature=1.0) -> torch.Tensor:
    """Exact divergence over the vocabulary (last axis) at every position, in float32; teacher detached.

    forward = KL(teacher || student), the distillation direction (mass-covering); reverse = KL(student ||
    teacher) (mode-seeking); js = Jensen-Shannon, the mean KL of both to their mixture. `temperature` divides
    both logits; the result is not rescaled by temperature**2 (the term's weight absorbs any such factor).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    if direction == "forward":
        return _kl(teacher, student)
    if direction == "reverse":
        return _kl(student, teacher)
    mixture = torch.logaddexp(student, teacher) - math.log(2.0)
    return (_kl(teacher, mixture) + _kl(student, mixture)) / 2


def full_kl(student_logits, teacher_logits, mask, direction="forward", temperature=1.0) -> torch.Tensor:
    """Mean over `mask`ed positions of the full-vocabulary divergence (see `full_kl_per_position`)."""
    return _masked_mean(full_kl_per_position(student_logits, teacher_logits, direction, temperature), mask)


def full_kl_sum_in_chunks(
    student_logits, teacher_logits, direction="forward", temperature=1.0, chunk_elements: int = 2**24
) -> torch.Tensor:
    """`full_kl_per_position(...).sum()` over `[M, V]` logits, computed `chunk_elements // V` positions at a time.

    The divergence keeps several float32 `[M, V]` intermediates (two log-softmaxes, their exponentials)
    alive until backward; each chunk is checkpointed instead, so only one chunk's intermediates exist at
    a time and backward recomputes them. Per-position values are those of the unchunked function.
    """
    rows_per_chunk = max(1, chunk_elements // student_logits.shape[-1])
    per_position = [
        checkpoint(full_kl_per_position, student, teacher, direction, temperature, use_reentrant=False)
        for student, teacher in zip(student_logits.split(rows_per_chunk), teacher_logits.split(rows_per_chunk))
    ]
    return torch.cat(per_position).sum()


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


# -- hidden states --------------------------------------------------------------------------------
def pooled_hidden_distance(student_hidden, teacher_hidden, student_mask, teacher_mask, metric="cosine") -> torch.Tensor:
    """Per-sequence distance between the mean-pooled `[B, T, D]` hidden states over each mask's positions.

    The two views may differ in length (`T_student != T_teacher`); cosine = 1 - cos, mse = mean squared
    difference over D. Returns `[B]` in float32; teacher detached.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    student = _masked_pool(student_hidden.float(), student_mask)
    teacher = _masked_pool(teacher_hidden.detach().float(), teacher_mask)
    if metric == "cosine":
        return 1 - F.cosine_similarity(student, teacher, dim=-1)
    return (student - teacher).square().mean(dim=-1)


def hidden_alignment(student_hidden, teacher_hidden, student_mask, teacher_mask, metric="cosine") -> torch.Tensor:
    """Mean over sequences of `pooled_hidden_distance`: pool over response tokens, then 1 - cos or MSE."""
    return pooled_hidden_distance(student_hidden, teacher_hidden, student_mask, teacher_mask, metric).mean()


def _masked_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=-2) / weights.sum(dim=-2).clamp(min=1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.bool()
    # `where`, not a product: a masked-out position may hold inf/nan (e.g. padding) and 0 * inf is nan.
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


# -- the registered term --------------------------------------------------------------------------
class AlignmentLoss:
    """Modality-gap alignment on paired batches: student rows [0, B) towards teacher rows [B, 2B).

    Row i of the student block pairs with row i of the teacher block; their targets are the same tokens
    at different positions (each branch has its own prompt), aligned by rank (see `xmodal.losses.base`).

    kind: token (the released recipe: `estimator` k1/k2/k3 on the target token's log-prob, with the released
      clamps unless `clamp` is false; see `token_kl_estimates`), full
      (`direction` forward/reverse/js at `temperature` over the whole vocabulary), hidden (`metric`
      cosine/mse between response-pooled hidden states of `layers`, indices into `outputs.hidden_states`,
      0 = embeddings, -1 = last layer; the distance is averaged over layers). Hidden states are taken at
      the prediction positions of the response tokens, the states the KL variants read their logits from.
    teacher: same (the teacher rows of the shared forward, detached) or frozen (a no-grad copy of the
      model taken at the first step, run on the teacher rows; see `xmodal.losses.teacher.FrozenTeacher`).

    Normalisation: sum over student response tokens / `ctx.target_normalizer("student")` (the global count
    of student response tokens), the LM loss's convention, so the term is a token mean over the global
    batch and does not change with the accumulation split. `hidden` yields one distance per sequence;
    each is weighted by its number of response tokens to keep that same normaliser.
    An unpaired batch (no `branch`) raises ConfigError (`require_pairs`).
    """

    def __init__(
        self,
        kind: str = "token",
        estimator: str = "k3",
        direction: str = "forward",
        temperature: float = 1.0,
        layers: Sequence[int] = (-1,),
        metric: str = "cosine",
        teacher: str = "same",
        clamp: bool = True,
    ):
        check_choices(
            "align",
            kind=(kind, KINDS),
            estimator=(estimator, ESTIMATORS),
            direction=(direction, DIRECTIONS),
            metric=(metric, METRICS),
            teacher=(teacher, TEACHERS),
        )
        if temperature <= 0:
            raise ValueError(f"align: temperature must be positive, got {temperature}")
        self.kind, self.estimator, self.direction, self.temperature = kind, estimator, direction, temperature
        self.layers, self.metric = list(layers), metric
        self.clamp = clamp
        self.frozen_teacher = FrozenTeacher() if teacher == "frozen" else None
        self.needs_hidden_states = kind == "hidden"

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        require_pairs(ctx.is_paired, "align")
        # None: the teacher is the detached teacher rows [B, 2B) of the shared forward.
        frozen = self.frozen_teacher(ctx, self.needs_hidden_states) if self.frozen_teacher else None
        sum_over_tokens = {"token": self._token_sum, "full": self._full_sum, "hidden": self._hidden_sum}[self.kind]
        return sum_over_tokens(ctx, frozen) / ctx.target_normalizer("student")

    def _token_sum(self, ctx: LossContext, frozen: Any) -> torch.Tensor:
        student = ctx.target_logprobs[ctx.branch_targets("student")]
        if frozen is None:
            teacher = ctx.target_logprobs[ctx.branch_targets("teacher")]
        else:
            teacher_tokens = ctx.target_tokens[ctx.branch_targets("teacher")]
            teacher = target_logprobs(frozen.logits, teacher_tokens)  # computed at the teacher's targets only
        return token_kl_estimates(student, teacher, self.estimator, self.clamp).sum()

    def _full_sum(self, ctx: LossContext, frozen: Any) -> torch.Tensor:
        student = ctx.target_logits[ctx.branch_targets("student")]
        if frozen is None:
            teacher = ctx.target_logits[ctx.branch_targets("teacher")]
        else:
            teacher = frozen.logits  # computed at the teacher's targets only
        return full_kl_sum_in_chunks(student, teacher, self.direction, self.temperature)

    def _hidden_sum(self, ctx: LossContext, frozen: Any) -> torch.Tensor:
        pairs = ctx.num_pairs
        if frozen is None:
            teacher_states = [states[pairs:] for states in ctx.outputs.hidden_states]
        else:
            teacher_states = frozen.hidden_states  # the frozen teacher ran on the teacher rows only
        student_mask, teacher_mask = ctx.target_mask[:pairs], ctx.target_mask[pairs:]
        tokens_per_pair = student_mask.sum(dim=1)
        summed = 0.0
        for layer in self.layers:
            distance = pooled_hidden_distance(
                ctx.outputs.hidden_states[layer][:pairs, :-1],
                teacher_states[layer][:, :-1],
                student_mask,
                teacher_mask,
                self.metric,
            )
            summed = summed + (distance * tokens_per_pair).sum()
        return summed / len(self.layers)


# -- the RL half ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RolloutAlignment:
    """`rl.align`: the term on full-reward rollouts (`weight` 0 switches it off), k1/k2/k3 `estimator` with the
    released `clamp`s as in `AlignmentLoss`, and the `normalize` convention of `rollout_alignment_loss`."""

    weight: float = 0.01
    estimator: str = "k3"
    clamp: bool = True
    normalize: str = "release"

    def __post_init__(self):
        check_choices("rl.align", estimator=(self.estimator, ESTIMATORS), normalize=(self.normalize, NORMALIZATIONS))
        if self.weight < 0:
            raise ValueError(f"rl.align.weight must be >= 0, got {self.weight}")


def full_reward_rows(rewards_per_func: torch.Tensor) -> torch.Tensor:
    """`[N]` bool: rollouts whose every reward component is 1, the ones aligned (the released "reward == 1")."""
    return torch.isclose(rewards_per_func, torch.ones_like(rewards_per_func), atol=1e-6).all(dim=1)


def inside_released_clamps(student_logprobs, teacher_logprobs, estimator: str = "k3") -> torch.Tensor:
    """Per token, whether the released clamps leave the estimate its gradient: |d| below RELEASED_LOG_RATIO_BOUND
    and the unclamped estimate within +-RELEASED_ESTIMATE_BOUND (where either binds, the gradient is zero)."""
    d = teacher_logprobs.detach().float() - student_logprobs.detach().float()
    estimate = token_kl_estimates(student_logprobs.detach(), teacher_logprobs, estimator, clamp=False)
    return (d.abs() < RELEASED_LOG_RATIO_BOUND) & (estimate.abs() < RELEASED_ESTIMATE_BOUND)


def rollout_alignment_sum(student_logps, teacher_logps, mask, alignment: RolloutAlignment) -> torch.Tensor:
    """Sum over the `mask`ed (aligned) tokens of the per-token estimate (teacher detached in `token_kl_estimates`)."""
    estimates = token_kl_estimates(student_logps, teacher_logps, alignment.estimator, alignment.clamp)
    return torch.where(mask.bool(), estimates, 0.0).sum()


def rollout_alignment_loss(
    token_sum: torch.Tensor, aligned_tokens: torch.Tensor, normalize: str, *, accumulation_steps: int,
    tokens_per_window: torch.Tensor,
) -> torch.Tensor:
    """One micro-batch's term from its `token_sum` over its `aligned_tokens`, normalised as `normalize` says:

    - `release` (verl's `token-mean`, as the released code aggregates its contrastive KL): the mean over this
      micro-batch's aligned tokens (0 without any), divided by `accumulation_steps`, the micro-batches whose
      gradients one optimizer step sums; every micro-batch weighs the same whatever its number of aligned tokens;
    - `global`: `token_sum / tokens_per_window`, the generation batch's aligned tokens per rank and accumulation
      window, so the optimizer step sees one token mean over every aligned token of the window (as TRL's DAPO
      normaliser does for the policy loss).
    """
    check_choices("rl.align", normalize=(normalize, NORMALIZATIONS))
    if normalize == "release":
        return token_sum / aligned_tokens.clamp(min=1) / accumulation_steps
    return token_sum / tokens_per_window
