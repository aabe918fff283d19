"""What a merged instance says about its parts, how groups are paired, and the modality grouping's names
(found untested by mutation testing, docs/testing.md)."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from xmodal.data_builders.builders import InstanceMixBuilder
from xmodal.data_builders.sources import MixtureSource, SyntheticFactsSource


def image_and_text(records: int, **more) -> MixtureSource:
    return MixtureSource({
        "image": SyntheticFactsSource(num_records=records),
        "text": SyntheticFactsSource(num_records=records, facts_in="text", name="synthetic_text"),
        **more,
    })


def test_each_part_is_described_by_its_record_group_and_supervision_and_the_instance_names_its_sources():
    source = image_and_text(2)
    records = {record["id"]: record for record in source.records()}
    built = InstanceMixBuilder(shuffle_order=False, supervise="last").build(source, seed=0)
    assert sorted(instance["id"] for instance in built) == ["instance_mix/000000", "instance_mix/000001"]
    for instance in built:
        assert (instance["source"], instance["condition"]) == ("image+text", "instance_mix")
        assert instance["meta"]["groups"] == ["image", "text"]
        parts = instance["meta"]["parts"]
        assert [part["group"] for part in parts] == ["image", "text"]  # unshuffled: by group name
        for position, part in enumerate(parts):
            record = records[part["id"]]
            assert part == {"id": record["id"], "source": record["source"], "group": part["id"].split("/")[0],
                            "condition": record["condition"], "target": record["target"],
                            "supervised": position == 1}  # `last`: only the second part's answer is trained


def test_grouping_by_modality_names_the_groups_image_and_text_whatever_the_sources():
    # two image sources and one text-only source: the groups are the two modalities, not the three sources
    source = image_and_text(3, other=SyntheticFactsSource(num_records=3, language="xx", second_language="en",
                                                          name="synthetic_xx", seed=1))
    records = {record["id"]: record for record in source.records()}
    for instance in InstanceMixBuilder(group_by="modality").build(source, seed=0):
        assert instance["meta"]["groups"] == ["image", "text"]
        for part in instance["meta"]["parts"]:
            assert part["group"] == ("image" if records[part["id"]]["images"] else "text"), part["id"]


def test_the_fullest_groups_are_paired_first_so_the_fewest_instructions_are_left_over(caplog):
    # groups text: 4, image: 1, other: 1 with the default k=2, by hand: (text, image), (text, other), then 2 of
    # `text` are left over and join those two instances. Pairing in name order (or the smallest first) would
    # pair image with other and leave all 4 of `text` over.
    source = MixtureSource({
        "text": SyntheticFactsSource(num_records=4, facts_in="text", name="synthetic_text"),
        "image": SyntheticFactsSource(num_records=1),
        "other": SyntheticFactsSource(num_records=1, language="xx", second_language="en", name="synthetic_xx"),
    })
    with caplog.at_level(logging.WARNING, logger="xmodal.data_builders.builders.instance_mix"):
        built = InstanceMixBuilder().build(source, seed=0)
    groups = sorted(tuple(sorted(Counter(part["group"] for part in i["meta"]["parts"]).items())) for i in built)
    assert groups == [(("image", 1), ("text", 2)), (("other", 1), ("text", 2))]
    assert caplog.messages == [
        "2 instructions of ['text'] had no other group left to pair with and were appended to existing instances; "
        "set builder.ratios to balance the groups"
    ]


def test_by_default_the_order_inside_an_instance_is_drawn_and_the_whole_build_repeats_with_its_seed():
    source = image_and_text(6)

    def parts(seed):
        return [[part["id"] for part in instance["meta"]["parts"]] for instance in InstanceMixBuilder().build(source, seed=seed)]

    orders = {tuple(part.split("/")[0] for part in instance) for instance in parts(0)}
    assert orders == {("image", "text"), ("text", "image")}
    assert parts(0) == parts(0) != parts(1)


@pytest.mark.parametrize("settings, message", [
    ({"k": 1}, "instance mixing needs k >= 2 instructions per instance, got 1"),
    ({"group_by": "language"}, r"group_by must be one of \('source', 'modality'\), got 'language'"),
    ({"supervise": "first"}, r"supervise must be one of \('all', 'last', 'random'\), got 'first'"),
    ({"layout": "stacked"}, r"layout must be one of \('interleaved', 'contexts_first'\), got 'stacked'"),
])
def test_an_impossible_setting_is_refused_naming_it(settings, message):
    with pytest.raises(ValueError, match=message):
        InstanceMixBuilder(**settings)

