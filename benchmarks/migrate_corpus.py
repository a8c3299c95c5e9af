"""The config migrator on whole trees of MMSelfSup 0.x / OpenSelfSup Python configs.

Walks every ``.py`` config under each TREE (fragments aside: files under a ``_base_`` folder
and files another config names in its ``_base_``) and every YAML file, runs ``selfsup-run migrate FILE -o
OUT.toml --check`` on each (in this process, one after the other; no data on disk is
needed) and counts: converted, passing ``--check``, failing ``--check`` (with the first error
line) and refused (with the one-line reason, grouped). Prints the counts and writes them,
with one record per file, to ``benchmarks/results/migrate_corpus.json``.

    python benchmarks/migrate_corpus.py /path/to/mmselfsup-0.x/configs/selfsup /path/to/OpenSelfSup/configs/selfsup

The trees are not in this repository: give a checkout of MMSelfSup 0.x (``configs/selfsup``,
``configs/benchmarks``) or OpenSelfSup (``configs``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from selfsup_core.cli import main as cli_main
from selfsup_core.config import display_path
from selfsup_core.fileio import atomic_write_text
from selfsup_migrate.static_eval import evaluate_bases, parse_file

OUT = Path(__file__).parent / "results" / "migrate_corpus.json"


def fragments(files: list[Path]) -> set[Path]:
    """Files some other config of ``files`` names in its ``_base_`` (resolved paths)."""
    named: set[Path] = set()
    for path in files:
        try:
            text, _, tree = parse_file(path, str(path))
            bases, _ = evaluate_bases(tree, text, str(path))
        except Exception:  # noqa: BLE001 - a file that does not parse names no base; migrate reports it
            continue
        named.update((path.parent / base).resolve() for base in bases)
    return named


def configs_of(tree: Path) -> list[Path]:
    """The full configs under ``tree``: ``.py`` files not under ``_base_`` and not named as a
    base, and YAML files (detectron2's benchmark configs: counted, and refused as such)."""
    files = sorted(p for p in tree.rglob("*") if p.suffix in (".py", ".yaml", ".yml") and p.is_file()
                   and "_base_" not in p.relative_to(tree).parts)
    named = fragments(sorted(tree.rglob("*.py")))
    return [p for p in files if p.resolve() not in named]


def reason_of(line: str) -> str:
    """A refusal line without its file and key, numbers and quoted names generalised (for grouping)."""
    text = line.removeprefix("error: ")
    text = re.sub(r"^\S+?\.(py|ya?ml)(:\d+)?: ", "", text)
    text = re.sub(r"'[^'\s]*'", "'X'", text)
    return re.sub(r"(?<![\w.])\d+(?![\w.])", "N", text)


def migrate_one(path: Path, folder: Path) -> dict[str, Any]:
    """Migrate and check one config; returns its record (status: passed / check failed / refused)."""
    out = folder / (path.stem + ".toml")
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli_main(["migrate", str(path), "-o", str(out), "--check", "--force"])
        except SystemExit as exc:  # argparse or a command ending the process
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # noqa: BLE001 - a crash is a finding; record it, go on
            code = -1
            print(f"crash: {type(exc).__name__}: {exc}", file=stderr)
    seconds = round(time.perf_counter() - start, 2)
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith(("error:", "crash:"))]
    warnings = [line for line in stderr.getvalue().splitlines() if line.startswith("warning:")]
    record: dict[str, Any] = {"file": display_path(path), "exit": code, "seconds": seconds,
                              "warnings": len(warnings)}
    if code == 0:
        record["status"] = "passed"
    elif out.exists():
        record["status"] = "check failed"
        record["line"] = errors[0] if errors else stdout.getvalue().strip().splitlines()[-1:]
    else:
        record["status"] = "crashed" if code == -1 else "refused"
        record["line"] = errors[0] if errors else stderr.getvalue().strip()[:300]
    out.unlink(missing_ok=True)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", metavar="TREE", help="a folder of Python configs")
    parser.add_argument("--out", default=str(OUT), help=f"the results JSON (default {OUT})")
    args = parser.parse_args()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for tree in map(Path, args.trees):
            for path in configs_of(tree):
                record = migrate_one(path, Path(folder))
                record["tree"] = str(tree)
                records.append(record)
                print(f"{record['status']:<12} {record['file']}" + (f"\n             {record['line']}"
                                                                    if "line" in record else ""), flush=True)
    status = Counter(r["status"] for r in records)
    refused = Counter(reason_of(r["line"]) for r in records if r["status"] == "refused")
    result = {
        "benchmark": "migrate_corpus",
        "command": "python benchmarks/migrate_corpus.py " + " ".join(args.trees),
        "configs": len(records),
        "converted": status["passed"] + status["check failed"],
        "passed_check": status["passed"],
        "failed_check": status["check failed"],
        "refused": status["refused"],
        "crashed": status["crashed"],
        "refused_by_reason": dict(refused.most_common()),
        "files": records,
    }
    print(f"\n{len(records)} configs: {result['converted']} converted, {result['passed_check']} pass --check, "
          f"{result['failed_check']} fail --check, {result['refused']} refused, {result['crashed']} crashed")
    for reason, count in refused.most_common():
        print(f"  refused {count:3d}: {reason}")
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
