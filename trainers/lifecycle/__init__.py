"""The life of a training run, from its directory to its final model: one run per `output_dir` (`run_directory`),
the files it writes while training (`callbacks`: metrics.jsonl, checkpoint completion markers), which checkpoints
exist and which to resume from (`checkpoints`), strict restore of their weights (`resume`), preemption and
non-finite losses (`preemption`, `nonfinite`), records the data skipped, in every log (`skipped_records`), the mixin every xmodal trainer uses for them (`resilience`), and
what the training entry points share to start and finish a run (`runs`)."""
