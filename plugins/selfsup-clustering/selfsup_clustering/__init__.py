"""selfsup-clustering: DeepCluster, ODC and SwAV for selfsup.

Components are found through entry points (``selfsup.algorithms``: DeepCluster, ODC, SwAV;
``selfsup.hooks``: DeepClusterHook, ODCHook, SwAVHook); importing this package imports no
torch.
"""
from __future__ import annotations

__version__ = "0.1.0"
