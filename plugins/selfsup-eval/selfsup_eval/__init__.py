"""selfsup-eval: evaluators for learned features (``selfsup.evaluators``).

``KNN`` (weighted kNN, the InstDisc protocol), ``LinearProbe`` (a linear classifier on frozen
features) and ``TSNE`` (a 2-d map of test features), with batched, distributed feature
extraction (:mod:`selfsup_eval.features`). Importing this package does not import torch.
"""
from __future__ import annotations

__version__ = "0.1.0"
