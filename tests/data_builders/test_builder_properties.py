"""Properties every build must keep, over many settings drawn by hypothesis: mixing keeps the multiset of
instructions, each image stays with the text of the instruction it came from, and every sample shows as many
image placeholders as it lists images."""

from __future__ import annotations

from collections import Counter
from functools import cache

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xmodal.data_builders.builders import (
    ConflictBuilder,
    CurriculumBuilder,
    DatasetMixBuilder,
    InstanceMixBuilder,
    PairedBuilder,
    SingleBuilder,
)
from xmodal.data_builders.sample import count_image_parts
from xmodal.data_builders.sources import MixtureSource, SyntheticFactsSource

# Builds are cheap once the synthetic images are rendered (cached): a few dozen settings per property.
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@cache
def mixture(image_records: int, text_records: int, other_records: int) -> MixtureSource:
    sources = {
        "image": SyntheticFactsSource(num_records=image_records),
        "text": SyntheticFactsSource(num_records=text_records, facts_in="text", name="synthetic_text"),
    }
    if other_records:
        sources["other"] = SyntheticFactsSource(
            num_records=other_records, language="xx", second_language="en", name="synthetic_xx", seed=1
        )
    return MixtureSource(sources)


mixtures = st.builds(mixture, st.integers(1, 9), st.integers(1, 9), st.integers(0, 6))
instance_mix_builders = st.builds(
    InstanceMixBuilder,
    k=st.integers(2, 4),
    group_by=st.sampled_from(["source", "modality"]),
    shuffle_order=st.booleans(),
    supervise=st.sampled_from(["all", "last", "random"]),
)
seeds = st.integers(0, 2**16)


def _records_by_id(source: MixtureSource) -> dict[str, dict]:
    return {record["id"]: record for record in source.records()}


def _assert_each_image_follows_its_own_text(instance: dict, records: dict[str, dict]) -> None:
    """The merged messages are the parts' messages in the parts' order; the images under each part's placeholders
    are exactly that part's own images, in its own order."""
    messages, images = list(instance["messages"]), list(instance["images"])
    for part in instance["meta"]["parts"]:
        record = records[part["id"]]
        own_messages, messages = messages[: len(record["messages"])], messages[len(record["messages"]) :]
        assert [m["content"] for m in own_messages] == [m["content"] for m in record["messages"]], part["id"]
        shown = count_image_parts(own_messages)
        own_images, images = images[:shown], images[shown:]
        assert own_images == record["images"], f"{part['id']}: images under its text are not its own"
    assert messages == [] and images == []


@PROPERTY_SETTINGS
@given(source=mixtures, builder=instance_mix_builders, seed=seeds)
def test_any_instance_mix_keeps_the_instructions_and_each_image_with_its_own_text(source, builder, seed):
    built = builder.build(source, seed=seed)  # both groupings find two groups: image and text-only sources
    records = _records_by_id(source)
    parts = Counter(part["id"] for instance in built for part in instance["meta"]["parts"])
    assert parts == Counter(records.keys())  # every instruction exactly once
    for instance in built:
        _assert_each_image_follows_its_own_text(instance, records)
        assert count_image_parts(instance["messages"]) == len(instance["images"])
        answers = [m["content"][0]["text"] for m in instance["messages"] if m["role"] == "assistant"]
        assert answers == [part["target"] for part in instance["meta"]["parts"]]


@PROPERTY_SETTINGS
@given(source=mixtures, seed=seeds, num_instructions=st.one_of(st.none(), st.integers(2, 8)), weight=st.integers(1, 3))
def test_instance_and_dataset_mix_draw_the_same_multiset_at_any_ratio(source, seed, num_instructions, weight):
    ratios = {"image": weight, "text": 1}
    smallest = min(len(source.groups()[name]) * (weight + 1) / ratios[name] for name in ratios)
    if num_instructions is not None and num_instructions > smallest:
        num_instructions = None  # the ratios would ask a group for more than it holds (refused; tested elsewhere)
    by_dataset = DatasetMixBuilder(ratios=ratios, num_instructions=num_instructions).build(source, seed=seed)
    assume({instance["source"] for instance in by_dataset} == set(ratios))  # a quota rounded to 0 leaves one group
    by_instance = InstanceMixBuilder(ratios=ratios, num_instructions=num_instructions).build(source, seed=seed)
    in_instances = Counter(part["id"] for instance in by_instance for part in instance["meta"]["parts"])
    assert in_instances == Counter(instance["id"] for instance in by_dataset)  # dataset_mix: one per instance
    assert set(in_instances.values()) == {1}


builders = st.sampled_from([
    SingleBuilder(),
    DatasetMixBuilder(),
    PairedBuilder(emit="mix"),
    PairedBuilder(emit="both"),
    CurriculumBuilder(switch_fraction=0.5, max_steps=4),
    ConflictBuilder(),
    InstanceMixBuilder(k=3),
])


@PROPERTY_SETTINGS
@given(source=mixtures, builder=builders, seed=seeds)
def test_every_built_sample_shows_as_many_placeholders_as_it_has_images(source, builder, seed):
    if not isinstance(builder, (DatasetMixBuilder, InstanceMixBuilder)):
        source = source.sources["image"]  # paired views, schedules and conflict sets read one image source
    for instance in builder.build(source, seed=seed, examples_per_step=2):
        assert count_image_parts(instance["messages"]) == len(instance["images"]), instance["id"]
        if "teacher" in instance:
            teacher = instance["teacher"]
            assert count_image_parts(teacher["messages"]) == len(teacher["images"]), instance["id"]
