"""The pure alignment functions against independent hand computations (explicit loops, float64)."""

import math

import pytest
import torch

from xmodal.losses import alignment
from xmodal.losses.alignment import (
    full_kl,
    full_kl_per_position,
    full_kl_sum_in_chunks,
    full_reward_rows,
    hidden_alignment,
    inside_released_clamps,
    RolloutAlignment,
    pooled_hidden_distance,
    rollout_alignment_loss,
    rollout_alignment_sum,
    token_kl,
    token_kl_estimates,
)

HAND_ESTIMATORS = {
    "k1": lambda d: d,
    "k2": lambda d: d * d / 2,
    "k3": lambda d: math.exp(d) - d - 1,
}


def _random_logprobs(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return -torch.rand(shape, generator=generator, dtype=torch.float64) * 3


def _hand_softmax(row):
    exps = [math.exp(x) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def _hand_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _hand_divergence(student_logits, teacher_logits, direction, temperature):
    """The `direction` divergence of one position's logits (lists), from explicit softmaxes."""
    p_student = _hand_softmax([x / temperature for x in student_logits])
    p_teacher = _hand_softmax([x / temperature for x in teacher_logits])
    if direction == "forward":
        return _hand_kl(p_teacher, p_student)
    if direction == "reverse":
        return _hand_kl(p_student, p_teacher)
    mixture = [(a + b) / 2 for a, b in zip(p_student, p_teacher)]
    return (_hand_kl(p_teacher, mixture) + _hand_kl(p_student, mixture)) / 2


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_unclamped_token_kl_matches_loop(estimator):
    student, teacher = _random_logprobs((3, 5), 0), _random_logprobs((3, 5), 1)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(2)) > 0.4
    values = [
        HAND_ESTIMATORS[estimator](teacher[i, j].item() - student[i, j].item())
        for i in range(3)
        for j in range(5)
        if mask[i, j]
    ]
    expected = sum(values) / len(values)
    assert token_kl(student, teacher, mask, estimator, clamp=False).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_token_kl_is_zero_when_teacher_equals_student(estimator):
    logprobs = _random_logprobs((4, 6), 0)
    assert token_kl(logprobs, logprobs.clone(), torch.ones(4, 6, dtype=torch.bool), estimator).item() == 0.0


def test_token_kl_ignores_non_finite_masked_positions():
    student = torch.tensor([-1.0, float("-inf")])
    teacher = torch.tensor([-0.5, -2.0])
    mask = torch.tensor([True, False])
    assert token_kl(student, teacher, mask).item() == pytest.approx(math.exp(0.5) - 0.5 - 1, rel=1e-6)


def test_unclamped_token_kl_gradient_reaches_only_the_student():
    student = _random_logprobs((2, 4), 0).requires_grad_()
    teacher = _random_logprobs((2, 4), 1).requires_grad_()
    mask = torch.ones(2, 4, dtype=torch.bool)
    token_kl(student, teacher, mask, "k3", clamp=False).backward()
    assert teacher.grad is None
    # d/ds [exp(t - s) - (t - s) - 1] = 1 - exp(t - s), averaged over 8 tokens
    expected = (1 - (teacher - student).exp()) / 8
    torch.testing.assert_close(student.grad.double(), expected.detach(), rtol=1e-5, atol=1e-7)


def _released_low_var_kl(logprob, ref_logprob):
    """The released k3 (verl's `low_var_kl`), written out in float64: clamp the log-ratio, then the estimate."""
    kl = (ref_logprob - logprob).clamp(-20, 20)
    return (kl.exp() - kl - 1).clamp(-10, 10)


def _logprobs_where_the_clamps_bind(seed):
    """Student/teacher log-probs whose d = teacher - student spans [-30, 30]: |d| > 20 and k3 > 10 both occur."""
    generator = torch.Generator().manual_seed(seed)
    teacher = -torch.rand(6, 8, generator=generator, dtype=torch.float64) * 5
    student = teacher - (torch.rand(6, 8, generator=generator, dtype=torch.float64) * 60 - 30)
    return student, teacher


def test_clamped_token_kl_equals_the_released_formula():
    student, teacher = _logprobs_where_the_clamps_bind(0)
    d = teacher - student
    assert (d > 20).any() and (d < -20).any() and ((d < 20) & (d.exp() - d - 1 > 10)).any()
    assert ((d.exp() - d - 1) < 10).any()  # and some tokens where no clamp binds
    mask = torch.rand(6, 8, generator=torch.Generator().manual_seed(1)) > 0.25
    expected = _released_low_var_kl(student, teacher)[mask].mean()
    assert token_kl(student, teacher, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert token_kl(student, teacher, mask, clamp=False).item() > expected.item() * 1e3  # the raw k3 explodes


def test_token_kl_estimates_default_to_the_released_clamped_k3():
    student, teacher = _logprobs_where_the_clamps_bind(3)
    torch.testing.assert_close(token_kl_estimates(student, teacher), _released_low_var_kl(student, teacher).float())


@pytest.mark.parametrize(
    "estimator,expected",
    [  # d = -25, -15, -3, 3, 15, 25 by hand: d clamped to [-20, 20], then the estimate to [-10, 10]
        ("k1", [-10.0, -10.0, -3.0, 3.0, 10.0, 10.0]),
        ("k2", [10.0, 10.0, 4.5, 4.5, 10.0, 10.0]),
    ],
)
def test_the_released_clamps_bound_every_estimator_both_ways(estimator, expected):
    teacher = torch.tensor([-25.0, -15.0, -3.0, 3.0, 15.0, 25.0])
    assert token_kl_estimates(torch.zeros(6), teacher, estimator).tolist() == expected


def test_a_log_ratio_beyond_float32_exp_gives_the_bound_and_no_gradient_not_nan():
    # exp(100) overflows float32; bounding d at 20 first keeps k3 finite, so its clamped gradient is 0, not 0 * inf.
    student = torch.tensor([-100.0, -1.0], requires_grad=True)
    estimate = token_kl_estimates(student, torch.zeros(2))
    assert estimate.tolist() == pytest.approx([10.0, math.exp(1.0) - 2.0])
    estimate.sum().backward()
    assert student.grad.tolist() == pytest.approx([0.0, 1 - math.exp(1.0)])


def test_clamped_token_kl_gradient_is_zero_where_a_clamp_binds():
    student, teacher = _logprobs_where_the_clamps_bind(2)
    student.requires_grad_()
    token_kl(student, teacher, torch.ones_like(student, dtype=torch.bool)).backward()
    d = (teacher - student).detach()
    binds = (d.abs() > 20) | (d.exp() - d - 1 > 10)
    assert binds.any() and (~binds).any()
    # Where nothing binds: d/ds [exp(t - s) - (t - s) - 1] = 1 - exp(d), over the 48 tokens of the mean.
    expected = torch.where(binds, 0.0, (1 - d.exp()) / d.numel())
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("direction", ["forward", "reverse", "js"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_kl_matches_explicit_softmax(direction, temperature):
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(2, 3, 7, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2, 3, 7, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    values = [
        _hand_divergence(student[i, j].tolist(), teacher[i, j].tolist(), direction, temperature)
        for i in range(2)
        for j in range(3)
        if mask[i, j]
    ]
    expected = sum(values) / len(values)
    result = full_kl(student, teacher, mask, direction=direction, temperature=temperature)
    assert result.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse", "js"])
def test_full_kl_is_zero_when_equal_and_gradient_reaches_only_the_student(direction):
    logits = torch.randn(2, 4, 9, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert full_kl(logits, logits.clone(), mask, direction=direction).item() == pytest.approx(0.0, abs=1e-6)
    student = logits.clone().requires_grad_()
    teacher = (logits + torch.randn_like(logits)).requires_grad_()
    full_kl(student, teacher, mask, direction=direction).backward()
    assert teacher.grad is None
    # The student's gradient is that of an independent float64 divergence with the teacher held constant.
    reference_student = logits.double().requires_grad_()
    p_student = reference_student.softmax(-1)
    p_teacher = teacher.detach().double().softmax(-1)

    def kl(p, q):
        return (p * (p / q).log()).sum(-1)

    mixture = (p_student + p_teacher) / 2
    divergence = {"forward": kl(p_teacher, p_student), "reverse": kl(p_student, p_teacher),
                  "js": (kl(p_teacher, mixture) + kl(p_student, mixture)) / 2}[direction]
    divergence.mean().backward()
    tolerance = 8 * torch.finfo(torch.float32).eps * reference_student.grad.abs().max().item()  # float32 inside
    torch.testing.assert_close(student.grad, reference_student.grad.float(), rtol=0, atol=tolerance)


# Response positions of two rows per view (one of them a single token); the views differ in length (5 and 7).
HIDDEN_MASKS = (
    torch.tensor([[0, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool),
    torch.tensor([[0, 0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool),
)


def _hand_pooled_distances(student, teacher, student_mask, teacher_mask, metric):
    """Per row: the mean of the masked hidden vectors of each view, then 1 - cos or the mean squared difference."""

    def pool(hidden, mask, row):
        kept = [hidden[row, t].tolist() for t in range(hidden.shape[1]) if mask[row, t]]
        return [sum(vector[d] for vector in kept) / len(kept) for d in range(hidden.shape[2])]

    distances = []
    for row in range(student.shape[0]):
        s, t = pool(student, student_mask, row), pool(teacher, teacher_mask, row)
        if metric == "cosine":
            dot = sum(a * b for a, b in zip(s, t))
            distances.append(1 - dot / (math.sqrt(sum(a * a for a in s)) * math.sqrt(sum(b * b for b in t))))
        else:
            distances.append(sum((a - b) ** 2 for a, b in zip(s, t)) / len(s))
    return distances


@pytest.mark.parametrize("metric", ["cosine", "mse"])
def test_hidden_alignment_matches_hand_pooling(metric):
    generator = torch.Generator().manual_seed(5)
    student = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 7, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    student_mask, teacher_mask = HIDDEN_MASKS
    distances = _hand_pooled_distances(student, teacher, student_mask, teacher_mask, metric)
    result = hidden_alignment(student, teacher, student_mask, teacher_mask, metric=metric)
    assert result.item() == pytest.approx(sum(distances) / 2, rel=1e-5)
    result.backward()
    assert teacher.grad is None
    # The student's gradient is that of the same distance written with torch's own ops, the teacher held constant.
    reference_student = student.detach().clone().requires_grad_()
    pooled = [torch.stack([hidden[row][mask[row]].mean(0) for row in range(2)])
              for hidden, mask in ((reference_student, student_mask), (teacher.detach(), teacher_mask))]
    if metric == "cosine":
        reference = (1 - torch.nn.functional.cosine_similarity(*pooled, dim=-1)).mean()
    else:
        reference = torch.nn.functional.mse_loss(*pooled)
    reference.backward()
    torch.testing.assert_close(student.grad, reference_student.grad, rtol=1e-5, atol=1e-7)


def test_unknown_estimator_is_rejected():
    with pytest.raises(ValueError, match="k1"):
        token_kl(torch.zeros(2), torch.zeros(2), torch.ones(2, dtype=torch.bool), "k4")


def test_unknown_metric_or_direction_is_rejected_naming_the_choices():
    hidden = torch.zeros(2, 5, 3), torch.zeros(2, 7, 3)
    with pytest.raises(ValueError, match=r"^metric must be one of \('cosine', 'mse'\), got 'l1'$"):
        pooled_hidden_distance(*hidden, *HIDDEN_MASKS, metric="l1")
    logits = torch.zeros(2, 7)
    with pytest.raises(ValueError, match=r"^direction must be one of \('forward', 'reverse', 'js'\), got 'up'$"):
        full_kl_per_position(logits, logits, direction="up")


@pytest.mark.parametrize("metric", ["cosine", "mse"])
def test_pooled_hidden_distance_is_one_distance_per_sequence(metric):
    generator = torch.Generator().manual_seed(9)
    student = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2, 7, 3, generator=generator, dtype=torch.float64)
    expected = _hand_pooled_distances(student, teacher, *HIDDEN_MASKS, metric)
    assert pooled_hidden_distance(student, teacher, *HIDDEN_MASKS, metric).tolist() == pytest.approx(expected, rel=1e-5)


def test_the_defaults_are_the_forward_kl_at_temperature_one_and_the_cosine_distance():
    generator = torch.Generator().manual_seed(7)
    student, teacher = torch.randn(2, 3, 7, generator=generator), torch.randn(2, 3, 7, generator=generator)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    forward = [_hand_divergence(student[i, j].tolist(), teacher[i, j].tolist(), "forward", 1.0)
               for i in range(2) for j in range(3)]
    assert full_kl_per_position(student, teacher).flatten().tolist() == pytest.approx(forward, rel=1e-5)
    masked = [value for value, kept in zip(forward, mask.flatten().tolist()) if kept]
    assert full_kl(student, teacher, mask).item() == pytest.approx(sum(masked) / len(masked), rel=1e-5)
    assert full_kl_sum_in_chunks(student.flatten(0, 1), teacher.flatten(0, 1)).item() == pytest.approx(
        sum(forward), rel=1e-5
    )
    student_hidden = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64)
    teacher_hidden = torch.randn(2, 7, 3, generator=generator, dtype=torch.float64)
    views = (student_hidden, teacher_hidden, *HIDDEN_MASKS)
    cosine = _hand_pooled_distances(*views, "cosine")
    assert pooled_hidden_distance(*views).tolist() == pytest.approx(cosine, rel=1e-5)
    assert hidden_alignment(*views).item() == pytest.approx(sum(cosine) / 2, rel=1e-5)


# 5 positions over a vocabulary of 7: 21 elements are chunks of 3 positions (the last one short), 5 elements fewer
# than one position (still one at a time), the default all 5 at once.
CHUNKINGS = {21: [3, 2], 5: [1, 1, 1, 1, 1], 2**24: [5]}


@pytest.mark.parametrize("chunk_elements", CHUNKINGS)
@pytest.mark.parametrize("direction,temperature", [("forward", 1.0), ("reverse", 2.0), ("js", 0.5)])
def test_full_kl_sum_in_chunks_is_the_hand_sum_and_its_gradient_the_unchunked_one(
    direction, temperature, chunk_elements
):
    generator = torch.Generator().manual_seed(6)
    student = torch.randn(5, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    expected = sum(_hand_divergence(s, t, direction, temperature) for s, t in zip(student.tolist(), teacher.tolist()))
    total = full_kl_sum_in_chunks(student, teacher, direction, temperature, chunk_elements=chunk_elements)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    # torch.autograd.grad as well as backward(): the checkpoint is the non-reentrant kind, which supports both.
    (gradient,) = torch.autograd.grad(total, student)
    reference = student.detach().clone().requires_grad_()
    full_kl_per_position(reference, teacher, direction, temperature).sum().backward()
    torch.testing.assert_close(gradient, reference.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_elements,positions_per_chunk", CHUNKINGS.items())
def test_full_kl_sum_in_chunks_holds_at_most_chunk_elements_logits_at_a_time(
    monkeypatch, chunk_elements, positions_per_chunk
):
    chunks = []

    def recording_divergence(student, teacher, *options):
        chunks.append((student.shape[0], teacher.shape[0]))
        return full_kl_per_position(student, teacher, *options)

    monkeypatch.setattr(alignment, "full_kl_per_position", recording_divergence)
    generator = torch.Generator().manual_seed(8)
    student, teacher = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    full_kl_sum_in_chunks(student, teacher, chunk_elements=chunk_elements)
    assert chunks == [(rows, rows) for rows in positions_per_chunk]


def test_full_reward_rows_are_those_whose_every_component_is_one():
    rewards_per_func = torch.tensor(
        [
            [1.0, 1.0, 1.0],
            [1.0, 0.0, 1.0],  # one component short
            [0.0, 0.0, 0.0],
            [1.0, 1.0, 0.5],
            [1.0 - 1e-7, 1.0, 1.0 + 1e-7],  # float rounding of a 1 still counts
            [1.0, 0.999, 1.0],  # a near-miss does not
        ]
    )
    assert full_reward_rows(rewards_per_func).tolist() == [True, False, False, False, True, False]
    assert full_reward_rows(torch.ones(0, 3)).tolist() == []


# d = teacher - student per token; by hand, k1 = d, k2 = d**2 / 2, k3 = exp(d) - d - 1:
#   d   =  2     3      -9     -15    25     0.5    -5 (both log-probs below -10)  12
#   k1  =  2     3      -9     -15    25     0.5    -5                             12
#   k2  =  2     4.5    40.5   112.5  312.5  0.125  12.5                           72
#   k3  =  4.39  16.09   8.00   14.00  huge  0.15    4.01                          huge
# Inside both released bounds (|d| < 20 and |estimate| < 10):
INSIDE_THE_CLAMPS = {
    "k1": [True, True, True, False, False, True, True, False],
    "k2": [True, True, False, False, False, True, False, False],
    "k3": [True, False, True, False, False, True, True, False],
}


@pytest.mark.parametrize("estimator", [None, "k1", "k2", "k3"])
def test_tokens_inside_the_released_clamps_are_those_with_a_gradient(estimator):
    teacher = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -15.0, 0.0])
    d = torch.tensor([2.0, 3.0, -9.0, -15.0, 25.0, 0.5, -5.0, 12.0])
    student = (teacher - d).requires_grad_(True)
    options = {} if estimator is None else {"estimator": estimator}  # None: the default, k3
    inside = inside_released_clamps(student, teacher, **options)
    assert inside.tolist() == INSIDE_THE_CLAMPS[estimator or "k3"]
    token_kl_estimates(student, teacher, estimator or "k3", clamp=True).sum().backward()
    assert ((student.grad != 0) == inside).all()  # where a clamp binds there is no gradient, elsewhere there is


# -- `rl.align.normalize`: the RL alignment term's normaliser over an accumulation window, on hand-computed numbers.
#
# One rank, two micro-batches per optimizer step (gradient accumulation 2, one generation batch per step). With k1 and
# no clamp each token's estimate is d = teacher - student, so the numbers below are sums of the teacher values.
STUDENT = torch.zeros(2, 3)
# micro-batch A: aligned tokens 1, 2, 3 | 4 (sum 10 over 4 tokens); micro-batch B: aligned token 6 (sum 6 over 1)
MICRO_BATCHES = [
    (torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]]), torch.tensor([[1, 1, 1], [1, 0, 0]])),
    (torch.tensor([[6.0, 9.0, 9.0], [9.0, 9.0, 9.0]]), torch.tensor([[1, 0, 0], [0, 0, 0]])),
]
ACCUMULATION = 2
WINDOW_TOKENS = torch.tensor(5.0)  # aligned tokens of the window on this rank: 4 + 1


def window_terms(normalize: str) -> list[float]:
    alignment = RolloutAlignment(estimator="k1", clamp=False, normalize=normalize)
    return [
        rollout_alignment_loss(
            rollout_alignment_sum(STUDENT, teacher, mask, alignment), mask.sum(), normalize,
            accumulation_steps=ACCUMULATION, tokens_per_window=WINDOW_TOKENS,
        ).item()
        for teacher, mask in MICRO_BATCHES
    ]


def test_release_is_each_micro_batch_token_mean_over_the_accumulation_steps():
    # A: 10 / 4 / 2 = 1.25; B: 6 / 1 / 2 = 3; the step's gradient is that of (2.5 + 6) / 2
    assert window_terms("release") == pytest.approx([1.25, 3.0])
    assert sum(window_terms("release")) == pytest.approx(4.25)


def test_global_is_one_token_mean_over_the_window():
    # A: 10 / 5 = 2; B: 6 / 5 = 1.2; together (10 + 6) / 5 = 3.2, the mean over all five aligned tokens
    assert window_terms("global") == pytest.approx([2.0, 1.2])
    assert sum(window_terms("global")) == pytest.approx(3.2)


def test_release_k3_with_the_released_clamps_and_a_micro_batch_without_aligned_tokens():
    alignment = RolloutAlignment()  # k3, clamped, release: the defaults
    teacher = torch.tensor([[math.log(2.0), 30.0]])  # d = ln 2: k3 = 2 - ln 2 - 1; d = 30: clamped to the bound 10
    mask = torch.ones(1, 2)
    summed = rollout_alignment_sum(torch.zeros(1, 2), teacher, mask, alignment)
    loss = rollout_alignment_loss(summed, mask.sum(), "release", accumulation_steps=4, tokens_per_window=WINDOW_TOKENS)
    assert loss.item() == pytest.approx(((1 - math.log(2.0)) + 10.0) / 2 / 4)
    empty = torch.zeros(1, 2)
    nothing = rollout_alignment_sum(torch.zeros(1, 2), teacher, empty, alignment)
    assert rollout_alignment_loss(nothing, empty.sum(), "release", accumulation_steps=4, tokens_per_window=WINDOW_TOKENS).item() == 0.0


def test_an_unknown_normalisation_names_the_key_and_the_choices():
    message = r"^rl.align.normalize must be one of \('release', 'global'\), got 'token'$"
    with pytest.raises(ValueError, match=message):
        RolloutAlignment(normalize="token")
    with pytest.raises(ValueError, match=message):
        rollout_alignment_loss(torch.tensor(1.0), torch.tensor(1), "token", accumulation_steps=1,
                               tokens_per_window=WINDOW_TOKENS)


def test_the_rollout_sum_without_clamps_is_the_raw_estimate():
    # d = 3 and 25: k3 = exp(3) - 4 = 16.09 and exp(25) - 26, neither bounded; the masked-out token (d = 1) not summed
    teacher = torch.tensor([[3.0, 25.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    summed = rollout_alignment_sum(torch.zeros(1, 3), teacher, mask, RolloutAlignment(clamp=False))
    assert summed.item() == pytest.approx(math.exp(3.0) - 4.0 + math.exp(25.0) - 26.0, rel=1e-6)
