"""Bad input: the error every source raises, and the raise-or-skip policy that counts what it skips."""

from __future__ import annotations

from collections import Counter

ON_ERROR_CHOICES = ("raise", "skip")
# What to ask when a `_target_` named in a config does not import.
NOT_IMPORTABLE_HINT = "is its module in the working directory or on PYTHONPATH?"


class DataError(ValueError):
    """A record that cannot become a sample; the message names the file, the record and the field.

    `reason` is the short, record-independent kind of problem, used as the key when skipped records are counted.
    """

    def __init__(self, file: str, record_id: object, field: str, problem: str, reason: str | None = None):
        self.file = str(file)
        self.record_id = record_id
        self.field = field
        self.problem = problem
        self.reason = reason or problem
        super().__init__(f"{self.file}: record {record_id!r}, field {field!r}: {problem}")


class ErrorPolicy:
    """`on_error: raise` re-raises a DataError; `on_error: skip` counts it in `skipped` by field and reason."""

    def __init__(self, on_error: str = "raise"):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.on_error = on_error
        self.skipped: Counter = Counter()

    def handle(self, error: DataError) -> None:
        if self.on_error == "raise":
            error.args = (f"{error} (on_error=skip skips such records and counts them in the build summary)",)
            raise error
        self.skipped[f"{error.field}: {error.reason}"] += 1


class ConfigError(ValueError):
    """A config value that cannot work, named by its config path (e.g. `trainer: ...`, `model: ...`)."""
