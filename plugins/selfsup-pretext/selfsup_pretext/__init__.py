"""selfsup-pretext: the pretext-task methods of MMSelfSup 0.x.

- :class:`~selfsup_pretext.relative_loc.RelativeLoc`: relative patch location (Doersch et al. 2015).
- :class:`~selfsup_pretext.rotation_pred.RotationPred`: rotation prediction (Gidaris et al. 2018).
- :class:`~selfsup_pretext.accuracy.PretextAccuracy`: the evaluator that scores the pretext task
  (top-1 of ``model(img, mode="test")``) on a pretext dataset.

Classes are imported lazily through the entry points; importing this package does not
import torch.
"""
from __future__ import annotations

__version__ = "0.1.0"
