"""The registered alignment term on hand-made paired batches whose branches have different prompt lengths."""

import math
from types import SimpleNamespace

import pytest
import torch

from xmodal.losses import LossContext
from xmodal.core.errors import ConfigError
from xmodal.losses.alignment import AlignmentLoss, RolloutAlignment
from xmodal.recipes.rl import check_alignment_data

# Row i's response starts after (left padding + prompt length); see PAIRED_LAYOUTS in conftest.py.
RESPONSE_STARTS = {0: 3, 1: 7, 2: 9, 3: 6}
RESPONSE_LENGTHS = {0: 3, 1: 2}
PAIRS = {0: 2, 1: 3}  # student row -> teacher row


def _hand_distribution(logits, row, position, temperature=1.0):
    scores = [score / temperature for score in logits[row, position].double().tolist()]
    exps = [math.exp(s) for s in scores]
    return [e / sum(exps) for e in exps]


def _aligned_positions():
    """(student row, student prediction position, teacher row, teacher position) for each response token."""
    for student, teacher in PAIRS.items():
        for k in range(RESPONSE_LENGTHS[student]):
            yield student, RESPONSE_STARTS[student] + k - 1, teacher, RESPONSE_STARTS[teacher] + k - 1


def _context(batch, outputs, num_items=None):
    return LossContext(model=None, batch=batch, outputs=outputs, num_items_in_batch=num_items)


@pytest.mark.parametrize("clamp", [True, False])
def test_token_k3_equals_hand_computation(make_batch, paired_layouts, clamp):
    batch, outputs = make_batch(paired_layouts, paired=True)
    labels, logits = batch["labels"], outputs.logits
    values = []
    for s_row, s_pos, t_row, t_pos in _aligned_positions():
        target = int(labels[s_row, s_pos + 1])
        assert target == int(labels[t_row, t_pos + 1])
        d = math.log(_hand_distribution(logits, t_row, t_pos)[target]) - math.log(
            _hand_distribution(logits, s_row, s_pos)[target]
        )
        if clamp:  # the released bounds: d to [-20, 20], k3 to [-10, 10]
            d = min(max(d, -20.0), 20.0)
            values.append(min(max(math.exp(d) - d - 1, -10.0), 10.0))
        else:
            values.append(math.exp(d) - d - 1)
    if clamp:
        assert any(value == 10.0 for value in values)  # the fixture's logits make the k3 clamp bind somewhere
    value = AlignmentLoss(kind="token", estimator="k3", clamp=clamp)(_context(batch, outputs))
    assert value.item() == pytest.approx(sum(values) / len(values), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_forward_kl_equals_hand_computation(make_batch, paired_layouts, temperature):
    batch, outputs = make_batch(paired_layouts, paired=True)
    values = []
    for s_row, s_pos, t_row, t_pos in _aligned_positions():
        p_teacher = _hand_distribution(outputs.logits, t_row, t_pos, temperature)
        p_student = _hand_distribution(outputs.logits, s_row, s_pos, temperature)
        values.append(sum(p * math.log(p / q) for p, q in zip(p_teacher, p_student)))
    value = AlignmentLoss(kind="full", direction="forward", temperature=temperature)(_context(batch, outputs))
    assert value.item() == pytest.approx(sum(values) / len(values), rel=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "mse"])
@pytest.mark.parametrize("layers", [[-1], [0, 2]])
def test_hidden_distance_is_token_weighted_over_pairs_and_averaged_over_layers(
    make_batch, paired_layouts, metric, layers
):
    batch, outputs = make_batch(paired_layouts, paired=True, hidden_size=4)
    per_layer = []
    for layer in layers:
        hidden = outputs.hidden_states[layer].detach().double()
        distances, weights = [], []
        for student, teacher in PAIRS.items():
            length = RESPONSE_LENGTHS[student]
            s = hidden[student, RESPONSE_STARTS[student] - 1 : RESPONSE_STARTS[student] - 1 + length].mean(0)
            t = hidden[teacher, RESPONSE_STARTS[teacher] - 1 : RESPONSE_STARTS[teacher] - 1 + length].mean(0)
            if metric == "cosine":
                distances.append(1 - float(s @ t) / (float(s.norm()) * float(t.norm())))
            else:
                distances.append(float((s - t).square().mean()))
            weights.append(length)
        per_layer.append(sum(d * w for d, w in zip(distances, weights)) / sum(weights))
    expected = sum(per_layer) / len(per_layer)
    term = AlignmentLoss(kind="hidden", layers=layers, metric=metric)
    assert term.needs_hidden_states
    assert term(_context(batch, outputs)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["token", "full", "hidden"])
def test_gradient_reaches_only_the_student_rows(make_batch, paired_layouts, kind):
    batch, outputs = make_batch(paired_layouts, paired=True, hidden_size=4)
    AlignmentLoss(kind=kind, estimator="k2")(_context(batch, outputs)).backward()
    source = outputs.hidden_states[-1] if kind == "hidden" else outputs.logits
    assert source.grad[:2].abs().sum() > 0
    assert source.grad[2:].abs().sum() == 0


@pytest.mark.parametrize("kind", ["token", "full", "hidden"])
def test_term_is_invariant_to_the_accumulation_split(make_batch, paired_layouts, kind):
    batch, outputs = make_batch(paired_layouts, paired=True, hidden_size=4)
    term = AlignmentLoss(kind=kind)
    full = term(_context(batch, outputs))
    micro = []
    for rows in ([0, 2], [1, 3]):  # one pair per micro-batch
        sub_batch = {key: value[rows] for key, value in batch.items()}
        hidden_states = [states[rows] for states in outputs.hidden_states]
        sub_outputs = SimpleNamespace(logits=outputs.logits[rows], hidden_states=hidden_states)
        micro.append(term(_context(sub_batch, sub_outputs, num_items=10)))  # HF: targets of all rows, both halves
    torch.testing.assert_close(sum(micro), full)


def test_unpaired_batch_is_refused_as_the_rl_half_refuses_it(make_batch):
    batch, outputs = make_batch([(0, 3, [4, 7, 2]), (0, 2, [5])], paired=False)
    message = (r"the alignment term needs both views of each record: use builder=paired builder.emit=both "
               r"\(or switch the term off\)$")
    with pytest.raises(ConfigError, match=r"^align: " + message):
        AlignmentLoss()(_context(batch, outputs))
    with pytest.raises(ConfigError, match=r"^rl.align: " + message):
        check_alignment_data(RolloutAlignment(weight=0.01), {"vision_prompt": [None, None]})


def test_pairs_with_different_targets_are_rejected(make_batch):
    batch, outputs = make_batch([(0, 3, [4, 7]), (0, 4, [4, 8])], paired=True)
    with pytest.raises(ValueError, match=r"pairs \[0\] differ"):
        AlignmentLoss()(_context(batch, outputs))
    batch, outputs = make_batch([(0, 3, [4, 7]), (0, 4, [4, 7, 1])], paired=True)
    with pytest.raises(ValueError, match="truncated"):
        AlignmentLoss()(_context(batch, outputs))


def test_bad_branch_layout_is_rejected(make_batch, paired_layouts):
    batch, outputs = make_batch(paired_layouts, paired=True)
    batch["branch"] = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="student rows, then teacher rows"):
        AlignmentLoss()(_context(batch, outputs))


def test_align_options_are_checked_naming_the_key_and_the_choices():
    refusals = {
        r"align.kind must be one of \('token', 'full', 'hidden'\), got 'attention'": {"kind": "attention"},
        r"align.estimator must be one of \('k1', 'k2', 'k3'\), got 'k4'": {"estimator": "k4"},
        r"align.direction must be one of \('forward', 'reverse', 'js'\), got 'up'": {"direction": "up"},
        r"align.metric must be one of \('cosine', 'mse'\), got 'l1'": {"metric": "l1"},
        r"align.teacher must be one of \('same', 'frozen'\), got 'ema'": {"teacher": "ema"},
        r"align: temperature must be positive, got 0.0": {"temperature": 0.0},
    }
    for message, options in refusals.items():
        with pytest.raises(ValueError, match=f"^{message}$"):
            AlignmentLoss(**options)


def test_rl_align_options_are_checked_naming_the_key_and_the_choices():
    assert RolloutAlignment(weight=0.0).weight == 0.0  # 0 switches the RL term off
    refusals = {
        r"rl.align.estimator must be one of \('k1', 'k2', 'k3'\), got 'k4'": {"estimator": "k4"},
        r"rl.align.normalize must be one of \('release', 'global'\), got 'token'": {"normalize": "token"},
        r"rl.align.weight must be >= 0, got -0.5": {"weight": -0.5},
    }
    for message, options in refusals.items():
        with pytest.raises(ValueError, match=f"^{message}$"):
            RolloutAlignment(**options)
