"""Version shims for the standard library (tomllib, importlib.metadata)."""
from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on older interpreters only
    import tomli as tomllib

if sys.version_info >= (3, 10):
    import importlib.metadata as importlib_metadata
else:  # pragma: no cover - exercised on older interpreters only
    import importlib_metadata

__all__ = ["importlib_metadata", "tomllib"]
