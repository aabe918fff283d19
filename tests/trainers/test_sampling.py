"""Length-grouped sampling: every instance once per epoch, groups of similar length, boundaries kept."""

import torch

from xmodal.data_builders.tokenize import EncodingSettings, tokenize_instances
from tests.support.tiny_batches import MODELS, instances
from xmodal.trainers.sampling import LengthGroupedSampler


def padded_tokens(order: list[int], lengths: list[int], batch: int) -> int:
    groups = [order[i : i + batch] for i in range(0, len(order), batch)]
    return sum(len(g) * max(lengths[i] for i in g) - sum(lengths[i] for i in g) for g in groups)


def test_groups_hold_similar_lengths_in_random_order():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 1000, (203,), generator=generator).tolist()
    sampler = LengthGroupedSampler(lengths, group_size=8, mega_groups=5, generator=generator)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(203)) and len(sampler) == 203
    assert first != second  # reshuffled every epoch
    groups = [first[i : i + 8] for i in range(0, 203, 8)]
    assert [len(g) for g in groups] == [8] * 25 + [3]  # the partial group last: batch boundaries stay aligned
    # Within a mega-batch of 40 sorted instances each group spans a narrow band; padding falls several-fold.
    random_order = torch.randperm(203, generator=generator).tolist()
    assert padded_tokens(first, lengths, 8) * 4 < padded_tokens(random_order, lengths, 8)
    # Groups are not ordered longest to shortest: the group maxima are shuffled.
    maxima = [max(lengths[i] for i in g) for g in groups[:-1]]
    assert maxima != sorted(maxima, reverse=True)


def test_the_length_column_is_the_padded_length_of_the_longer_view(tmp_path):
    build = MODELS["llava"]
    _, processor = build()
    dataset = tokenize_instances(
        instances(tmp_path, paired=True), processor, EncodingSettings(max_length=512), str(tmp_path / "cache")
    )
    views = [(len(row["input_ids"]), len(row["teacher_input_ids"])) for row in dataset]
    assert any(teacher > student for student, teacher in views)  # the facts make the teacher view longer
    assert dataset["length"] == [max(view) for view in views]
