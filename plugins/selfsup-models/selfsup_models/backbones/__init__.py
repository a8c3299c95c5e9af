"""Backbones: ``forward(x) -> tuple`` of feature maps (one per ``out_indices``) and an
``out_channels`` attribute. Registered in the ``selfsup.backbones`` entry-point group."""
from __future__ import annotations

from .resnet import ResNet, ResNetV1d, ResNeXt
from .swin import SimMIMSwinTransformer, SwinTransformer
from .timm_backbone import TimmBackbone
from .vision_transformer import MAEViT, VisionTransformer

__all__ = [
    "MAEViT",
    "ResNeXt",
    "ResNet",
    "ResNetV1d",
    "SimMIMSwinTransformer",
    "SwinTransformer",
    "TimmBackbone",
    "VisionTransformer",
]
