"""The synthetic facts task: deterministic by seed, facts where `facts_in` says, two disjoint languages."""

from __future__ import annotations

from pathlib import Path

from xmodal.data_builders.sources import SyntheticFactsSource


def test_same_seed_same_records_and_images(tmp_path):
    a = SyntheticFactsSource(num_records=20, seed=3, cache_dir=str(tmp_path / "a")).records()
    b = SyntheticFactsSource(num_records=20, seed=3, cache_dir=str(tmp_path / "b")).records()
    strip = lambda records: [{k: v for k, v in r.items() if k != "images"} for r in records]  # noqa: E731
    assert strip(a) == strip(b)
    image_bytes = lambda records: [Path(p).read_bytes() for r in records for p in r["images"]]  # noqa: E731
    assert image_bytes(a) == image_bytes(b)
    other = SyntheticFactsSource(num_records=20, seed=4).records()
    assert [r["meta"]["cells"] for r in other] != [r["meta"]["cells"] for r in a]
    # a record does not depend on how many are generated
    assert SyntheticFactsSource(num_records=5, seed=3).records()[4]["meta"] == a[4]["meta"]


def test_answer_is_the_asked_keys_value():
    for record in SyntheticFactsSource(num_records=50, num_facts=(2, 4)).records():
        cells = record["meta"]["cells"]
        key = record["meta"]["question"].removeprefix("What is the value of ").removesuffix("?")
        assert 2 <= len(cells) <= 4 and record["target"] == cells[key]
        qa = record["meta"]["conflict_qa"]
        assert qa["evidence"] == f"{key} = {cells[key]}" and qa["counter_answer"] != qa["answer"]


def test_facts_in_controls_the_prompt_and_image():
    image, = SyntheticFactsSource(num_records=1, facts_in="image").records()
    text, = SyntheticFactsSource(num_records=1, facts_in="text").records()
    both, = SyntheticFactsSource(num_records=1, facts_in="both").records()
    facts = image["meta"]["facts"]
    assert len(image["images"]) == 1 and not any(f in image["messages"][0]["content"][-1]["text"] for f in facts)
    assert text["images"] == [] and all(f in text["messages"][0]["content"][-1]["text"] for f in facts)
    assert len(both["images"]) == 1 and all(f in both["messages"][0]["content"][-1]["text"] for f in facts)
    assert image["target"] == text["target"] == both["target"]


def test_second_language_is_a_disjoint_surface_form():
    en, = SyntheticFactsSource(num_records=1, language="en", second_language="xx").records()
    xx, = SyntheticFactsSource(num_records=1, language="xx", second_language="en").records()
    assert list(en["meta"]["cells"].values()) != list(xx["meta"]["cells"].values())  # other value words
    assert set(en["meta"]["cells"]).isdisjoint(xx["meta"]["cells"])  # other key words, same positions
    assert en["meta"]["conflict_qa"]["evidence_l2"].split(" is ")[0] in {"red", "green", "blue", "yellow"}


def test_question_language_makes_bilingual_records():
    """Facts in English, question and answer in the second language: the answer is the translated value."""
    en = SyntheticFactsSource(num_records=30, facts_in="text").records()
    bilingual = SyntheticFactsSource(num_records=30, facts_in="text", question_language="xx").records()
    english_keys, other_keys = ["A", "B", "C", "D"], ["red", "green", "blue", "yellow"]
    english_values, other_values = [str(d) for d in range(10)], list("abcdefghjk")
    for plain, record in zip(en, bilingual):
        assert record["meta"]["facts"] == plain["meta"]["facts"]  # the same facts, still in English
        asked = other_keys.index(record["meta"]["question"].removeprefix("Which letter is ").removesuffix("?"))
        assert record["target"] == other_values[english_values.index(plain["meta"]["cells"][english_keys[asked]])]
        assert record["meta"]["conflict_qa"] == plain["meta"]["conflict_qa"]  # conflicts stay in the record's language
        assert record["id"] != plain["id"]


def test_conflict_evidence_cells_are_the_record_image_with_the_asked_cell_set():
    for record in SyntheticFactsSource(num_records=30).records():
        qa, cells = record["meta"]["conflict_qa"], record["meta"]["cells"]
        keys = ["A", "B", "C", "D"]
        asked = keys.index(record["meta"]["question"].removeprefix("What is the value of ").removesuffix("?"))
        shown = [cells.get(key) for key in keys]
        assert qa["evidence_cells"] == {"glyphs": shown, "image_size": 64}
        counter = qa["counter_evidence_cells"]["glyphs"]
        assert counter[asked] == qa["counter_answer"] != shown[asked]
        assert counter[:asked] + counter[asked + 1 :] == shown[:asked] + shown[asked + 1 :]


def test_answer_template_puts_a_sentence_before_the_answer():
    from xmodal.data_builders.sources import SyntheticFactsSource

    plain, sentence = (SyntheticFactsSource(num_records=3, seed=1, **kwargs).records()
                       for kwargs in ({}, {"answer_template": "So {key} is {answer}."}))
    for bare, long in zip(plain, sentence):
        key = long["meta"]["question"].split()[-1].rstrip("?")  # "What is the value of C?" -> C
        assert long["target"] == f"So {key} is {bare['target']}." and long["messages"][0] == bare["messages"][0]
