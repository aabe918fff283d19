"""Training-time metrics: attention imbalance (`imbalance` math, `imbalance_probes` masks, `imbalance_callback`),
each a `TrainerCallback` selected with `metrics=<name>`, and their plots (`plots`)."""
