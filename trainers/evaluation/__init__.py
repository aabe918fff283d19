"""Answering and scoring held-out instances, shared by `xmodal-eval` and the in-training `metrics=eval` callback:
`answers` (items, prompts, generation, per-item scores) and `report` (rates per condition, the modality gap,
conflict rates, paired-bootstrap confidence intervals, the results table)."""
