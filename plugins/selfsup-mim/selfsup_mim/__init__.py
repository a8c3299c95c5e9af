"""selfsup-mim: masked image modelling for selfsup.

``MAE`` (masked autoencoder: ``MAEViT`` encoder on the visible patches, ``MAEPretrainDecoder``,
``MAEPretrainHead``), ``SimMIM`` (mask-token backbone, ``SimMIMNeck``, ``SimMIMHead``),
``MaskFeat`` (:mod:`selfsup_mim.maskfeat`, HOG targets in :mod:`selfsup_mim.hog`) and ``CAE``
(:mod:`selfsup_mim.cae`, DALL-E tokenizer in :mod:`selfsup_mim.dalle`, two-size crop in
:mod:`selfsup_mim.transforms`), ``IJEPA`` (:mod:`selfsup_mim.ijepa`: ``IJEPAPredictor``,
``IJEPAHead``, the ``LinearMomentumUpdate`` hook; multi-block masks in
:mod:`selfsup_mim.ijepa_masks`), plus :mod:`selfsup_mim.visualize` (a PNG of original / masked / reconstructed images).
Importing this package does not import torch.
"""
from __future__ import annotations

__version__ = "0.1.0"
