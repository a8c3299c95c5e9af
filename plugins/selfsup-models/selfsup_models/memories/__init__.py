"""Memories: per-sample feature banks kept across iterations (MMSelfSup 0.x names)."""
from __future__ import annotations

from .odc import ODCMemory
from .simple import SimpleMemory

__all__ = ["ODCMemory", "SimpleMemory"]
