"""selfsup-core: the thin core of the selfsup self-supervised learning framework.

The core defines *how* components are found, configured and built; every algorithm,
backbone, dataset and evaluator lives in a plugin distribution discovered through entry
points. Importing this package is cheap: it does not import torch.
"""
from __future__ import annotations

__version__ = "0.1.0"
