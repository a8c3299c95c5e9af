"""Backbone key layouts of other libraries (torchvision, timm, mmcls), one module per backbone
family, each a ``selfsup.plugins`` entry point implementing the core's
``selfsup_convert_backbone`` hook:

* :mod:`.resnet`: ResNets (torchvision's names, shared by timm), checked against torchvision's
  (and timm's) models;
* :mod:`.vit`: ViTs (timm's names in selfsup; torchvision's renamed; mmcls's recognised);
* :mod:`.timm`: a ``TimmBackbone`` (timm's own names under ``timm_model.``).

Swin's mmcls / SimMIM names are fitted when its weights load (``SwinTransformer.adapt_state_dict``).
``selfsup-run export --to`` and ``import-weights --from`` dispatch through
:func:`convert_backbone`. Importing these modules does not import torch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from selfsup_core.api import WeightsError, get_plugin_manager

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from selfsup_core.api import ConvertedBackbone


def convert_backbone(state: Mapping[str, torch.Tensor], direction: str, layout: str,
                     backbone: Mapping[str, Any] | None = None, *, required: bool = True) -> ConvertedBackbone | None:
    """The first answer of the installed ``selfsup_convert_backbone`` implementations.

    ``required``: raise :class:`WeightsError` (one line) when no implementation converts the
    weights (an ``export``: use ``--to raw``); else return None then."""
    converted = get_plugin_manager().hook.selfsup_convert_backbone(
        state=state, direction=direction, layout=layout, backbone=backbone)
    if converted is None and required:
        kind = f"type {backbone['type']}, " if backbone and backbone.get("type") else ""
        sample = ", ".join(list(state)[:3])
        if direction == "export":
            raise WeightsError(f"--to {layout}: no installed plugin converts this backbone ({kind}keys {sample}, ...) "
                               f"to {layout} key names (selfsup-models converts ResNets and ViTs); use --to raw")
        raise WeightsError(f"--from {layout}: these weights do not look like {layout} ones (keys {sample}, ...); "
                           "try --from auto")
    return converted


def drop_row(keys: str, count: int, reason: str) -> dict[str, Any]:
    """One ``{"keys", "count", "reason"}`` row of a conversion's ``dropped`` list."""
    return {"keys": keys, "count": count, "reason": reason}


#: Why a converted backbone has no classifier.
CLASSIFIER = "classifier (not part of a backbone)"
#: The same, for weights imported into a backbone.
NO_CLASSIFIER = "classifier (the backbone has none)"
