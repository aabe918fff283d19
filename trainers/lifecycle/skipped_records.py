"""Records a source skipped (data.on_error=skip) reported with every log: counted at start or found mid-run."""

from __future__ import annotations

from transformers import TrainerCallback


class SkippedRecordsCallback(TrainerCallback):
    """Adds `skipped_records` (the source's skip count so far) to every log event, so metrics.jsonl shows it.

    A streamed source (data.streaming=true) converts records as the trainer reads them, so the count grows
    during the run; a prepared source's count is final at start. Nothing is added while nothing was skipped.
    """

    def __init__(self, source):
        self.source = source

    def on_log(self, args, state, control, logs=None, **kwargs):
        skipped = sum(self.source.skipped.values())
        if logs is not None and skipped:
            logs["skipped_records"] = skipped
