"""The data benchmark's generated LLaVA corpus reads the same through today's source and data=messages."""

import importlib.util
from pathlib import Path

from xmodal.data_builders.sources import LlavaInstructSource, MessagesSource

REPO = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_data", REPO / "scripts" / "bench_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_corpus_reads_the_same_through_llava_instruct_and_messages_sharegpt(tmp_path, cache_dir):
    bench = load_script()
    corpus = bench.write_corpus(tmp_path, records=12, images=5, image_size=16)
    folder = str(tmp_path / "images")
    today = LlavaInstructSource(str(corpus), folder).records()
    new = MessagesSource(str(corpus), layout="sharegpt", image_folder=folder, cache_dir=cache_dir).records()
    fields = ("messages", "images", "target")
    assert [{key: sample[key] for key in fields} for sample in new] == [{key: sample[key] for key in fields} for sample in today]
    assert len(today) == 12 and len({sample["images"][0] for sample in today}) == 5
    assert today[7]["target"] == "rgb({}, {}, {})".format(*bench.COLOURS[7 % 5])
