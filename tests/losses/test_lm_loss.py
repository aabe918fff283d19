"""The LM term against a hand cross-entropy, and its invariance to the gradient-accumulation split."""

import math
from types import SimpleNamespace

import pytest
import torch

from xmodal.losses import LossContext
from xmodal.losses.lm import LMLoss

UNPAIRED_LAYOUTS = [(0, 3, [4, 7, 2]), (2, 5, [9, 1]), (0, 2, [3, 3, 5, 6]), (1, 9, [8])]


def hand_logprobs(logits, labels, rows):
    """log p(label) at every labelled position of `rows`, predicted one position earlier (explicit loops)."""
    values = []
    for row in rows:
        for position in range(1, labels.shape[1]):
            target = int(labels[row, position])
            if target == -100:
                continue
            scores = logits[row, position - 1].double().tolist()
            log_total = math.log(sum(math.exp(s) for s in scores))
            values.append(scores[target] - log_total)
    return values


def _split(batch, outputs, rows):
    sub_batch = {key: value[rows] for key, value in batch.items()}
    return sub_batch, SimpleNamespace(logits=outputs.logits[rows])


def test_lm_loss_equals_hand_cross_entropy(make_batch):
    batch, outputs = make_batch(UNPAIRED_LAYOUTS, paired=False)
    expected = -sum(hand_logprobs(outputs.logits, batch["labels"], range(4))) / 10
    loss = LMLoss()(LossContext(model=None, batch=batch, outputs=outputs))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_lm_loss_matches_torch_cross_entropy_with_shift(make_batch):
    batch, outputs = make_batch(UNPAIRED_LAYOUTS, paired=False)
    reference = torch.nn.functional.cross_entropy(
        outputs.logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
    )
    loss = LMLoss()(LossContext(model=None, batch=batch, outputs=outputs))
    torch.testing.assert_close(loss, reference)


def test_micro_batch_losses_add_up_to_the_full_batch_loss(make_batch):
    batch, outputs = make_batch(UNPAIRED_LAYOUTS, paired=False)
    full = LMLoss()(LossContext(model=None, batch=batch, outputs=outputs))
    num_items = int((batch["labels"][:, 1:] != -100).sum())
    micro = [
        LMLoss()(LossContext(model=None, batch=b, outputs=o, num_items_in_batch=torch.tensor(num_items)))
        for b, o in (_split(batch, outputs, [0, 3]), _split(batch, outputs, [1, 2]))
    ]
    torch.testing.assert_close(sum(micro), full)


@pytest.mark.parametrize("branches, rows", [("student", [0, 1]), ("teacher", [2, 3]), ("both", [0, 1, 2, 3])])
def test_paired_branch_selection_is_a_token_mean_over_that_branch(make_batch, paired_layouts, branches, rows):
    batch, outputs = make_batch(paired_layouts, paired=True)
    values = hand_logprobs(outputs.logits, batch["labels"], rows)
    expected = -sum(values) / len(values)
    plain = LMLoss(branches)(LossContext(model=None, batch=batch, outputs=outputs))
    # HF counts the targets of ALL rows; a single branch must still come out as its own token mean.
    all_targets = torch.tensor(10)
    scaled = LMLoss(branches)(LossContext(model=None, batch=batch, outputs=outputs, num_items_in_batch=all_targets))
    assert plain.item() == pytest.approx(expected, rel=1e-5)
    assert scaled.item() == pytest.approx(expected, rel=1e-5)


def test_paired_student_loss_is_invariant_to_the_accumulation_split(make_batch, paired_layouts):
    batch, outputs = make_batch(paired_layouts, paired=True)
    full = LMLoss("student")(LossContext(model=None, batch=batch, outputs=outputs))
    # One pair per micro-batch (student row i with teacher row 2 + i), HF's count over both micro-batches.
    micro = [
        LMLoss("student")(LossContext(model=None, batch=b, outputs=o, num_items_in_batch=10))
        for b, o in (_split(batch, outputs, [0, 2]), _split(batch, outputs, [1, 3]))
    ]
    torch.testing.assert_close(sum(micro), full)


def test_unknown_branches_is_rejected():
    with pytest.raises(ValueError, match="student"):
        LMLoss("vision")
