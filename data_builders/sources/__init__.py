"""Sources (`data=`): read records of one format into samples (docs/design.md)."""

from .built import BuiltSource
from .conflict_qa import ConflictQASource
from .llava_instruct import LlavaInstructSource
from .messages import MessagesSource
from .mixture import MixtureSource, source_groups
from .pgps9k import Pgps9kSource, verbalise_clause
from .synthetic import SyntheticFactsSource
from .text_only import TextOnlySource

__all__ = [
    "BuiltSource",
    "ConflictQASource",
    "LlavaInstructSource",
    "MessagesSource",
    "MixtureSource",
    "Pgps9kSource",
    "SyntheticFactsSource",
    "TextOnlySource",
    "source_groups",
    "verbalise_clause",
]
