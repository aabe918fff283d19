"""Instances -> the prompt rows an RL run samples rollouts from (TRL's conversational dataset format).

One row per instance: `prompt` (the conversation up to its last assistant turn, image parts unfilled), `images`
(decoded to PIL by the dataset's Image feature, as TRL expects), `target` (the reference answer the rewards
compare with) and `id`. A paired instance (`builder=paired builder.emit=both`) is sampled from its text-centric
`teacher` view, as in the released recipe, and also carries `vision_prompt` / `vision_images`: its own
vision-centric view, which the alignment term re-scores the rollouts under. Unpaired instances carry none.
"""

from __future__ import annotations

from datasets import Dataset, Image, Sequence

from .sample import prompt_messages


def sampled_view(instance: dict) -> dict:
    """The view rollouts are sampled from, as an unpaired instance: a paired instance's text-centric `teacher`."""
    teacher = instance.get("teacher")
    if not teacher:
        return instance
    unpaired = {key: value for key, value in instance.items() if key != "teacher"}
    return {**unpaired, "id": f"{instance['id']}:{teacher['condition']}", **teacher}


def rollout_rows(instances: list[dict]) -> list[dict]:
    rows = []
    for instance in instances:
        teacher = instance.get("teacher")
        sampled = sampled_view(instance)
        rows.append(
            {
                "id": instance["id"],
                "prompt": prompt_messages(sampled["messages"]),
                "images": list(sampled["images"]),
                "target": instance["target"],
                "vision_prompt": prompt_messages(instance["messages"]) if teacher else None,
                "vision_images": list(instance["images"]) if teacher else [],
            }
        )
    return rows


def rollout_dataset(instances: list[dict]) -> Dataset:
    """`rollout_rows` as a `datasets.Dataset` whose image columns decode to PIL images."""
    dataset = Dataset.from_list(rollout_rows(instances))
    for column in ("images", "vision_images"):
        dataset = dataset.cast_column(column, Sequence(Image()))
    return dataset
