"""Training-time metrics, each a `MetricCallback` (`base`) selected with `metrics=<name>`: attention imbalance
(`imbalance` math, `imbalance_probes` masks and the probe loop, `imbalance_callback`), held-out answers
(`eval_callback`), and their plots (`plots`)."""
