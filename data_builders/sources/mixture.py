"""Several named sources, each with its own config, read as one: the input of the mixing builders."""

from __future__ import annotations

from collections import Counter


class MixtureSource:
    """`sources`: name -> source. Samples are renamed `name/<id>` with `source = name`, so ids stay unique and
    the builders can group (and balance) by the name the user gave."""

    def __init__(self, sources: dict, name: str = "mixture"):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        self.name = name
        self.sources = dict(sources)
        self._groups: dict[str, list[dict]] | None = None

    def groups(self) -> dict[str, list[dict]]:
        if self._groups is None:
            self._groups = {
                key: [{**sample, "id": f"{key}/{sample['id']}", "source": key} for sample in source.records()]
                for key, source in self.sources.items()
            }
        return self._groups

    def records(self) -> list[dict]:
        return [sample for group in self.groups().values() for sample in group]

    @property
    def skipped(self) -> Counter:
        return Counter(
            {f"{key}: {reason}": n for key, source in self.sources.items() for reason, n in source.skipped.items()}
        )


def source_groups(source) -> dict[str, list[dict]]:
    """A mixture's named groups, or one group named after a plain source."""
    return source.groups() if hasattr(source, "groups") else {source.name: source.records()}
