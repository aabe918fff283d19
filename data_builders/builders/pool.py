"""The instructions a mixing run trains on, drawn per group by ratio: shared by dataset_mix and instance_mix so
that, at the same settings, both use exactly the same instructions (matched data)."""

from __future__ import annotations

import random


def draw_pool(
    groups: dict[str, list[dict]], ratios: dict | None, num_instructions: int | None, seed: int
) -> dict[str, list[dict]]:
    """Per group, the samples to use, without replacement.

    No `ratios`: every sample of every group. With `ratios` (name -> weight): `num_instructions` split by
    weight, or, when it is None, the largest total the smallest group (relative to its weight) allows.
    """
    if not ratios:
        return {name: list(samples) for name, samples in groups.items()}
    unknown = set(ratios) - set(groups)
    if unknown:
        raise ValueError(f"ratios name unknown sources {sorted(unknown)}; sources: {sorted(groups)}")
    weights = {name: float(w) for name, w in ratios.items() if float(w) > 0}
    total_weight = sum(weights.values())
    if num_instructions is None:
        num_instructions = int(min(len(groups[n]) * total_weight / w for n, w in weights.items()))
    quotas = {name: int(num_instructions * w / total_weight) for name, w in weights.items()}
    pool = {}
    for name, quota in quotas.items():
        if quota > len(groups[name]):
            raise ValueError(f"source {name!r} has {len(groups[name])} samples, the ratios ask for {quota}")
        samples = list(groups[name])
        random.Random(f"{seed}:{name}").shuffle(samples)
        pool[name] = samples[:quota]
    return pool
