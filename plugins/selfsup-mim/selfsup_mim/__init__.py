"""selfsup-mim: masked image modelling for selfsup.

``MAE`` (masked autoencoder: ``MAEViT`` encoder on the visible patches, ``MAEPretrainDecoder``,
``MAEPretrainHead``) and ``SimMIM`` (mask-token backbone, ``SimMIMNeck``, ``SimMIMHead``),
plus :mod:`selfsup_mim.visualize` (a PNG of original / masked / reconstructed images).
Importing this package does not import torch.
"""
from __future__ import annotations

__version__ = "0.1.0"
