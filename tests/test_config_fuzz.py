"""A seeded sweep of malformed configs derived from the shipped Fashion-MNIST configs (type
swaps, deletions, out-of-range numbers, unknown keys, bad TOML, bad --cfg-options), each run
in-process through ``selfsup-run CONFIG --check``: every one ends with exit 2, only
``error:`` lines (one per problem) and no traceback (issue 34)."""
from __future__ import annotations

import contextlib
import io

import pytest

pytest.importorskip("selfsup_models")
pytest.importorskip("selfsup_data")

from selfsup_core.cli import main  # noqa: E402

from .config_fuzz_cases import cases  # noqa: E402

CASES = 200


def test_every_malformed_config_ends_in_error_lines_and_exit_2(tmp_path):
    failures = []
    generated = cases(seed=34, count=CASES)
    assert len(generated) == CASES
    for index, (name, text, extra) in enumerate(generated):
        path = tmp_path / f"case{index}.toml"
        path.write_bytes(text.encode("utf-8"))
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main([str(path), "--check", "--no-dry-run", *extra])
            except BaseException as exc:  # noqa: BLE001 - an escaped exception is a failure of the case
                code = f"raised {type(exc).__name__}: {exc}"[:200]
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        if code != 2 or not lines or any(not line.startswith("error: ") for line in lines) \
                or "Traceback" in err.getvalue():
            failures.append(f"{name}: exit {code}: {lines[:2]}")
    assert not failures, "\n".join(failures)
