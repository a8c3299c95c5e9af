"""Size of a package: physical lines, and how many are docstrings, blank lines, comments and code.

    python benchmarks/core_size.py [PACKAGE_DIR]   (default: selfsup_core)
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path


def size(root: Path) -> dict[str, int]:
    """Line counts over every ``.py`` file below ``root``."""
    counts = {"files": 0, "lines": 0, "docstrings": 0, "blank": 0, "comments": 0}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        counts["files"] += 1
        counts["lines"] += len(lines)
        counts["blank"] += sum(1 for line in lines if not line.strip())
        counts["comments"] += sum(1 for line in lines if line.strip().startswith("#"))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                    counts["docstrings"] += first.end_lineno - first.lineno + 1
    counts["code"] = counts["lines"] - counts["docstrings"] - counts["blank"] - counts["comments"]
    return counts


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "selfsup_core")
    print("  ".join(f"{key}: {value}" for key, value in size(root).items()))
