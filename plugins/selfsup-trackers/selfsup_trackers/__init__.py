"""selfsup-trackers: experiment trackers (Weights & Biases, MLflow) as trainer hooks.

Importing this package imports neither torch nor a tracker library.
"""
from __future__ import annotations

__version__ = "0.1.0"
