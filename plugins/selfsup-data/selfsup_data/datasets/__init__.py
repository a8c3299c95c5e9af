"""Datasets (entry-point group ``selfsup.datasets``): a data source plus pipelines -> sample dicts."""
from __future__ import annotations

from .base import BaseDataset, Compose
from .deepcluster import DeepClusterDataset
from .pretext import RelativeLocDataset, RotationPredDataset
from .views import MultiViewDataset, OneViewDataset
from .wrappers import ConcatDataset, RepeatDataset

SingleViewDataset = OneViewDataset

__all__ = [
    "BaseDataset", "Compose", "ConcatDataset", "DeepClusterDataset", "MultiViewDataset", "OneViewDataset",
    "RelativeLocDataset", "RepeatDataset", "RotationPredDataset", "SingleViewDataset",
]
