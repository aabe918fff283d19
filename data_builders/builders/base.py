"""What the trainer relies on from every builder (docs/design.md): `build(...)`, `ordered`, and `dropped`."""

from __future__ import annotations

from collections import Counter


class Builder:
    """`build(source, *, seed, examples_per_step) -> list[instance]`.

    `ordered` is True when the trainer must keep the instance order (a schedule); `dropped` counts records a
    builder could not use, by reason, for the build summary. `streams`: see data_builders.records.
    """

    ordered = False
    streams = False  # True when `build` takes a streamed source (data.streaming=true) without reading it all

    def __init__(self):
        self.dropped: Counter = Counter()

    def build(self, source, *, seed: int, examples_per_step: int = 1) -> list[dict]:
        raise NotImplementedError
