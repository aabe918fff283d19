"""The RL alignment term on real tiny LLaVA and Qwen2-VL models and a real XModalGRPOTrainer: which rollouts it reads, where its
gradient goes, and the released clamps, each checked against an independent per-row computation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from xmodal.losses.alignment import RELEASED_ESTIMATE_BOUND
from tests.support.rl import build_rl_trainer

TEMPERATURE = 0.8  # the released rollout temperature: both branches' log-probs are taken at it


@pytest.fixture(scope="module", params=["tiny_llava", "tiny_qwen2_vl"])
def trainer(request, tmp_path_factory, cache_dir):
    trainer = build_rl_trainer(
        tmp_path_factory.mktemp("rl-align"),
        [f"model={request.param}", "builder=paired", "rl.align.weight=0.01", f"rl.grpo.temperature={TEMPERATURE}"],
    )
    trainer.current_gradient_accumulation_steps = 1  # what the training loop sets for a window of one micro-batch
    return trainer


def rollout_inputs(trainer, aligned: list[bool], lengths: list[int], seed: int = 0) -> dict:
    """A micro-batch as `_generate_and_score_completions` leaves it: real prompt rows, random responses."""
    rows = [trainer.train_dataset[i] for i in range(len(aligned))]
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    completion_ids = torch.randint(5, 200, (len(rows), width), generator=generator)
    completion_mask = (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).long()
    aligned = torch.tensor(aligned)
    return {
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "align_rows": aligned,
        "vision_inputs": [trainer._encode_vision_prompt(row) for row in rows],
        "align_num_items": (completion_mask * aligned.unsqueeze(1)).sum(),
    }


def independent_student_logps(trainer, inputs: dict, row: int) -> torch.Tensor:
    """log p(response) under the vision-centric prompt: one unpadded row, plain forward, logits / temperature."""
    vision = inputs["vision_inputs"][row]
    length = int(inputs["completion_mask"][row].sum())
    response = inputs["completion_ids"][row, :length]
    input_ids = torch.cat([vision["input_ids"][0], response]).unsqueeze(0)
    image_inputs = {key: value for key, value in vision.items() if key != "input_ids"}
    if "mm_token_type_ids" in image_inputs:  # Qwen2-VL: the response tokens are text
        image_inputs["mm_token_type_ids"] = torch.nn.functional.pad(image_inputs["mm_token_type_ids"], (0, length))
    logits = trainer.model(input_ids=input_ids, **image_inputs).logits[0]
    prompt_length = vision["input_ids"].size(1)
    logps = (logits[prompt_length - 1 : -1] / TEMPERATURE).log_softmax(-1)
    return logps.gather(-1, response.unsqueeze(1)).squeeze(1)


def released_k3(d: torch.Tensor) -> torch.Tensor:
    """verl's low_var_kl as released: d clamped to [-20, 20], exp(d) - d - 1 clamped to [-10, 10]."""
    d = d.clamp(-20, 20)
    return (d.exp() - d - 1).clamp(-10, 10)


def test_only_full_reward_rollouts_count_and_match_an_independent_computation(trainer):
    inputs = rollout_inputs(trainer, aligned=[True, False, True], lengths=[4, 3, 2])
    teacher = torch.randn(3, 4, generator=torch.Generator().manual_seed(1)) - 3.0
    loss = trainer._alignment_loss(trainer.model, inputs, teacher)

    expected_sum = sum(
        released_k3(teacher[row, : int(inputs["completion_mask"][row].sum())] - independent_student_logps(trainer, inputs, row)).sum()
        for row in (0, 2)
    )
    assert inputs["align_num_items"] == 6
    torch.testing.assert_close(loss, expected_sum / 6, rtol=1e-4, atol=1e-5)

    # The unrewarded row's response and teacher values do not enter the term.
    changed = dict(inputs, completion_ids=inputs["completion_ids"].clone())
    changed["completion_ids"][1] = torch.randint(5, 200, (4,))
    changed_teacher = teacher.clone()
    changed_teacher[1] += 5.0
    torch.testing.assert_close(trainer._alignment_loss(trainer.model, changed, changed_teacher), loss)


def test_gradient_reaches_the_vision_branch_only(trainer):
    inputs = rollout_inputs(trainer, aligned=[True, True], lengths=[3, 4], seed=2)
    teacher = (torch.randn(2, 4, generator=torch.Generator().manual_seed(3)) - 3.0).requires_grad_()
    trainer.model.zero_grad()
    trainer._alignment_loss(trainer.model, inputs, teacher).backward()
    assert teacher.grad is None  # the text-centric branch is a constant of the term
    grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_clamped_tokens_give_the_bound_and_no_gradient(trainer):
    inputs = rollout_inputs(trainer, aligned=[True, True], lengths=[3, 2], seed=4)
    reference = torch.zeros(2, 3)
    with torch.no_grad():
        for row, length in ((0, 3), (1, 2)):
            reference[row, :length] = independent_student_logps(trainer, inputs, row)
    teacher = reference + 0.5  # d = 0.5 on row 0
    teacher[1] = reference[1] + 25.0  # d = 25 > 20: both clamps bind on row 1

    trainer.model.zero_grad()
    loss = trainer._alignment_loss(trainer.model, inputs, teacher)
    (loss * 5).backward()  # times the normaliser: the token sum
    with_clamped = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    unclamped_row = released_k3(torch.full((3,), 0.5, dtype=torch.float64)).sum().item()
    assert (loss * 5).item() == pytest.approx(unclamped_row + 2 * RELEASED_ESTIMATE_BOUND, rel=1e-3)

    only_row_0 = dict(inputs, align_rows=torch.tensor([True, False]), align_num_items=torch.tensor(3))
    trainer.model.zero_grad()
    (trainer._alignment_loss(trainer.model, only_row_0, teacher) * 3).backward()
    without_clamped = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    for a, b in zip(with_clamped, without_clamped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_the_trainer_normalises_as_rl_align_normalize_says(trainer):
    inputs = rollout_inputs(trainer, aligned=[True, False, True], lengths=[4, 3, 2], seed=5)
    inputs["align_num_items"] = torch.tensor(12)  # the generation batch also holds other micro-batches' tokens
    teacher = torch.randn(3, 4, generator=torch.Generator().manual_seed(6)) - 3.0
    with torch.no_grad():
        token_sum = sum(
            released_k3(teacher[row, :length] - independent_student_logps(trainer, inputs, row)).sum()
            for row, length in ((0, 4), (2, 2))
        )
    released, accumulation, training = trainer.alignment, trainer.current_gradient_accumulation_steps, trainer.model.training
    trainer.current_gradient_accumulation_steps = 2
    trainer.model.train()  # training accumulates; evaluation (TRL's eval mode) does not
    try:
        with torch.no_grad():
            release = trainer._alignment_loss(trainer.model, inputs, teacher)
            trainer.alignment = dataclasses.replace(released, normalize="global")
            global_mean = trainer._alignment_loss(trainer.model, inputs, teacher)
    finally:
        trainer.alignment, trainer.current_gradient_accumulation_steps = released, accumulation
        trainer.model.train(training)
    assert released.normalize == "release"  # the default
    torch.testing.assert_close(release, token_sum / 6 / 2, rtol=1e-4, atol=1e-5)  # this micro-batch's 6 tokens
    # 12 tokens in the generation batch, which spans steps_per_generation micro-batches; a window is 2 of them
    window_tokens = 12 * 2 / trainer.args.steps_per_generation
    torch.testing.assert_close(global_mean, token_sum / window_tokens, rtol=1e-4, atol=1e-5)
