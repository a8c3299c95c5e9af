"""Memories: per-sample feature banks kept across iterations (MMSelfSup 0.x names)."""
from __future__ import annotations

from .interclr import InterCLRMemory
from .odc import ODCMemory
from .simple import SimpleMemory

__all__ = ["InterCLRMemory", "ODCMemory", "SimpleMemory"]
