"""PairedBuilder's defaults and its seeded order (found untested by mutation testing, docs/testing.md)."""

from __future__ import annotations

import pytest

from xmodal.data_builders.builders import PairedBuilder
from xmodal.data_builders.sample import prompt_text
from xmodal.data_builders.sources import SyntheticFactsSource


def test_by_default_each_record_is_a_vision_centric_instance_with_its_facts_one_a_line_under_teacher():
    source = SyntheticFactsSource(num_records=6, facts_in="image")
    records = {record["id"]: record for record in source.records()}
    for instance in PairedBuilder().build(source, seed=0):
        assert instance["condition"] == "vision_centric" and instance["teacher"]["condition"] == "text_centric"
        facts = records[instance["meta"]["pair_id"]]["meta"]["facts"]
        assert "\n".join(facts) in prompt_text(instance["teacher"])


def test_instances_are_shuffled_by_the_seed_unless_shuffle_is_off():
    source = SyntheticFactsSource(num_records=12)
    order = [record["id"] for record in source.records()]

    def pairs(builder, seed):
        return [instance["meta"]["pair_id"] for instance in builder.build(source, seed=seed)]

    assert pairs(PairedBuilder(), 3) == pairs(PairedBuilder(), 3) != order
    assert pairs(PairedBuilder(), 3) != pairs(PairedBuilder(), 4)
    assert pairs(PairedBuilder(shuffle=False), 3) == order


def test_an_unknown_emit_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"emit must be one of .*got 'pairs'"):
        PairedBuilder(emit="pairs")
