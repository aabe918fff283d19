"""inside_released_clamps: which aligned tokens the released (clamped) k3 term can still move, as the RL run logs
(`align_inside_clamp`)."""

from __future__ import annotations

import torch

from xmodal.losses.alignment import inside_released_clamps, token_kl_estimates


def test_tokens_inside_the_clamps_are_those_with_a_gradient():
    # d = teacher - student; k3 = exp(d) - d - 1 by hand: d=2 -> 4.39, 3 -> 16.09 (> 10), -9 -> 8.00, -15 -> 14.00
    # (> 10), 25 -> beyond the d bound of 20
    d = torch.tensor([2.0, 3.0, -9.0, -15.0, 25.0, 0.5])
    teacher = torch.zeros(6)
    student = (-d).clone().requires_grad_(True)
    inside = inside_released_clamps(student, teacher)
    assert inside.tolist() == [True, False, True, False, False, True]
    token_kl_estimates(student, teacher, "k3", clamp=True).sum().backward()
    assert ((student.grad != 0) == inside).all()  # where a clamp binds there is no gradient, elsewhere there is
