"""Generic conflict-QA records (JSON/JSONL): a question, its answer, supporting and contradicting evidence.

Fields: `id`, `question`, `answer`, `evidence` (supports the answer), `counter_evidence` (supports
`counter_answer` instead), `counter_answer`, and optional `evidence_l2` / `counter_evidence_l2` (the same passages in a
second language, needed for the cross-lingual condition).
"""

from __future__ import annotations

from xmodal.core.errors import DataError
from ..sample import make_sample, message, text_part
from .base import Source, read_file_or_hub, require

REQUIRED_FIELDS = ("question", "answer", "evidence", "counter_evidence", "counter_answer")
OPTIONAL_FIELDS = ("evidence_l2", "counter_evidence_l2")


class ConflictQASource(Source):
    """Each record becomes a text-only sample (evidence then question); `meta.conflict_qa` keeps the parts."""

    def __init__(
        self,
        path: str,
        name: str = "conflict_qa",
        split: str = "train",
        prompt_template: str = "Evidence: {evidence}\nQuestion: {question}",
        on_error: str = "raise",
        limit: int | None = None,
    ):
        super().__init__(name, on_error, limit)
        self.path = path
        self.split = split
        self.prompt_template = prompt_template

    def _raw_records(self):
        return read_file_or_hub(self.path, self.split)

    def _to_sample(self, file, record_id, raw):
        fields = {key: require(raw, file, record_id, key) for key in REQUIRED_FIELDS}
        for key in OPTIONAL_FIELDS:
            value = raw.get(key)
            if value is not None and not isinstance(value, str):
                raise DataError(file, record_id, key, "expected a string", "wrong type")
            fields[key] = value
        prompt = self.prompt_template.format(evidence=fields["evidence"], question=fields["question"])
        messages = [message("user", [text_part(prompt)]), message("assistant", [text_part(fields["answer"])])]
        meta = {"question": fields["question"], "facts": [fields["evidence"]], "conflict_qa": fields}
        return make_sample(f"{self.name}/{record_id}", self.name, messages, [], meta=meta)
