"""`layout: contexts_first`: each instruction's first user turn splits into its context and its question, every
context goes in front of the instance's first question, and a record that cannot be split is refused naming it
(found untested by mutation testing, docs/testing.md)."""

from __future__ import annotations

import copy

import pytest

from xmodal.core.errors import DataError
from xmodal.data_builders.builders import InstanceMixBuilder
from xmodal.data_builders.builders.instance_mix import split_context
from xmodal.data_builders.sample import image_part, make_sample, message, text_part
from xmodal.data_builders.sources import MixtureSource, SyntheticFactsSource


def sample(first_user_parts, images=(), meta=None, before=(), after=()):
    messages = [*before, message("user", first_user_parts), message("assistant", [text_part("4")]), *after]
    return make_sample("q7", "geometry.jsonl", messages, list(images), meta=meta)


def test_the_question_named_by_meta_is_cut_from_the_end_of_the_first_user_turn_and_the_rest_is_context():
    system = message("system", [text_part("Answer briefly.")])
    follow_up = [message("user", [text_part("And B?")]), message("assistant", [text_part("5")])]
    record = sample([text_part("See the figure."), image_part(), text_part("Facts: A = 4\nWhat is A?")], ["a.png"],
                    meta={"question": "What is A?"}, before=[system], after=follow_up)
    untouched = copy.deepcopy(record)
    context, turns = split_context(record)
    assert context == [text_part("See the figure."), image_part(), text_part("Facts: A = 4\n")]
    assert turns == [system, message("user", [text_part("What is A?")]), message("assistant", [text_part("4")]),
                     *follow_up]
    assert record == untouched  # the record's own conversation is not rewritten


@pytest.mark.parametrize("meta", [None, {"question": "Which is larger?"}, {"question": "What is A?"}])
def test_without_a_question_ending_the_text_the_whole_last_text_part_is_the_question(meta):
    # no meta question, one that does not end the text, one that is the whole text: nothing is cut from it
    context, turns = split_context(sample([image_part(), text_part("What is A?")], ["a.png"], meta=meta))
    assert context == [image_part()]
    assert turns[0] == message("user", [text_part("What is A?")])


@pytest.mark.parametrize("parts, images, problem, reason", [
    ([image_part()], ["a.png"], "layout=contexts_first needs a user turn ending in a text question",
     "no text in the first user turn"),
    ([text_part("What is A?"), image_part()], ["a.png"],
     "layout=contexts_first needs every image in the first user turn's context", "1 images after it"),
    ([image_part(), text_part("What is A?"), image_part(), image_part()], ["a.png", "b.png", "c.png"],
     "layout=contexts_first needs every image in the first user turn's context", "2 images after it"),
])
def test_a_first_user_turn_that_cannot_be_split_is_refused_naming_the_record(parts, images, problem, reason):
    with pytest.raises(DataError) as refused:
        split_context(sample(parts, images))
    error = refused.value
    assert (error.file, error.record_id, error.field, error.problem, error.reason) == (
        "geometry.jsonl", "q7", "messages", problem, reason)


def test_a_conversation_without_a_user_turn_is_refused():
    no_user = make_sample("q8", "geometry.jsonl", [message("assistant", [text_part("4")])], [])
    with pytest.raises(DataError, match="'q8', field 'messages': layout=contexts_first needs a user turn"):
        split_context(no_user)


def test_contexts_first_puts_both_contexts_before_the_first_question_and_each_question_after():
    source = MixtureSource({"image": SyntheticFactsSource(num_records=1),
                            "text": SyntheticFactsSource(num_records=1, facts_in="text", name="synthetic_text")})
    image_record, text_record = (source.groups()[name][0] for name in ("image", "text"))
    [instance] = InstanceMixBuilder(layout="contexts_first", shuffle_order=False).build(source, seed=0)
    # by hand: the image record's turn is [image, question]; the text record's turn is "Facts: ...\n" + question
    image_question = image_record["messages"][0]["content"][1]["text"]
    text_turn, text_question = text_record["messages"][0]["content"][0]["text"], text_record["meta"]["question"]
    assert text_turn == f"{text_turn[: -len(text_question)]}{text_question}" and text_turn.startswith("Facts:")
    assert instance["messages"] == [
        message("user", [image_part(), text_part(text_turn[: -len(text_question)]), text_part(image_question)]),
        image_record["messages"][1],
        message("user", [text_part(text_question)]),
        text_record["messages"][1],
    ]
    assert instance["images"] == image_record["images"]
    assert [part["id"] for part in instance["meta"]["parts"]] == ["image/synthetic/en/0/0", "text/synthetic_text/en/0/0"]
