"""Builders (`builder=`): turn source samples into training or evaluation instances (docs/design.md)."""

from .conflict import ConflictBuilder
from .cross_modal_qa import CrossModalQABuilder
from .curriculum import CurriculumBuilder
from .dataset_mix import DatasetMixBuilder
from .instance_mix import InstanceMixBuilder
from .paired import PairedBuilder
from .single import SingleBuilder

__all__ = [
    "ConflictBuilder",
    "CrossModalQABuilder",
    "CurriculumBuilder",
    "DatasetMixBuilder",
    "InstanceMixBuilder",
    "PairedBuilder",
    "SingleBuilder",
]
