"""Cost of the attention-imbalance metric, as ratios against baselines timed in the same run.

Prints (medians over repeats):
- probe forward / plain no-grad forward on the same batch (the extra sdpa call per measured layer);
- metric overhead as a fraction of training time: one probe (all probe batches) divided by
  `every_n_steps` training steps (forward + backward + AdamW step) at the training batch size.

Defaults are the shipped ones: the tiny LLaVA of conf/model/tiny_llava.yaml, the synthetic facts data,
and conf/metrics/imbalance.yaml. Example: `python scripts/bench_imbalance.py --model tiny_qwen2_vl`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from xmodal.data_builders.collate import MultimodalCollator
from xmodal.data_builders.tokenize import EncodingSettings, encode_instance
from xmodal.recipes import CONFIG_DIR
from xmodal.trainers.metrics.imbalance import measure
from xmodal.trainers.metrics.imbalance_callback import collate_probe



def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny_llava", help="a conf/model group with an `init` builder")
    parser.add_argument("--train-batch-size", type=int, default=16, help="conf/trainer/default.yaml's batch")
    parser.add_argument("--repeats", type=int, default=5, help="timings per measured quantity (median taken)")
    parser.add_argument("--mode", default=None, help="weight | norm (default: the metric config's)")
    return parser.parse_args()


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up: first calls pay allocation and kernel selection
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main() -> None:
    options = parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"model={options.model}", "metrics=imbalance", f"cache_dir={tempfile.mkdtemp()}"],
        )
    metric = cfg.metrics.imbalance
    mode = options.mode or metric.mode
    torch.manual_seed(cfg.seed)
    model, processor = instantiate(cfg.model.init, _convert_="all")
    instances = instantiate(cfg.data, num_records=options.train_batch_size + metric.probe_size).records()
    rows = [encode_instance(i, processor, EncodingSettings(**cfg.encoding)) for i in instances]
    rows = [row for row in rows if row is not None]
    collator = MultimodalCollator(processor)
    train_batch = collator(rows[: options.train_batch_size])
    probe = collate_probe(
        rows[options.train_batch_size :], collator, model.config, processor,
        metric.probe_batch_size, metric.query, metric.spans,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        model.train()
        loss = model(**train_batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    probe_batch, probe_masks = probe[0]
    probe_inputs = {key: value for key, value in probe_batch.items() if key != "labels"}

    @torch.no_grad()
    def plain_forward():
        model.eval()
        model(**probe_inputs, use_cache=False)

    def probe_forward():
        measure(model, probe_batch, probe_masks.query, probe_masks.a, probe_masks.b, layers=metric.layers, mode=mode)

    def whole_probe():
        for batch, masks in probe:
            measure(model, batch, masks.query, masks.a, masks.b, layers=metric.layers, mode=mode)

    step = median_seconds(train_step, options.repeats)
    plain = median_seconds(plain_forward, options.repeats)
    probed = median_seconds(probe_forward, options.repeats)
    probe_total = median_seconds(whole_probe, options.repeats)
    overhead = probe_total / (metric.every_n_steps * step)
    print(f"model={options.model} mode={mode} layers={metric.layers or 'all'} probe={len(probe)} batch(es) of "
          f"<= {metric.probe_batch_size}, train batch {options.train_batch_size}, threads {torch.get_num_threads()}")
    print(f"train step            {step * 1e3:8.1f} ms (baseline)")
    print(f"plain no-grad forward {plain * 1e3:8.1f} ms (baseline, probe batch)")
    print(f"probe forward         {probed * 1e3:8.1f} ms = {probed / plain:.2f} x plain forward")
    print(f"whole probe           {probe_total * 1e3:8.1f} ms every {metric.every_n_steps} steps "
          f"= {100 * overhead:.2f} % of training time")


if __name__ == "__main__":
    main()
