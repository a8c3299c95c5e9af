"""Running a training or evaluation subprocess from a benchmark script, and reading its start-up line."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], log: Path) -> float:
    """Run ``command`` from the repository root, its output to ``log``; returns the wall time.
    Exits with the log's tail on failure. Ctrl-C or SIGTERM (see :func:`exit_on_sigterm`)
    stops the subprocess too: a killed benchmark must not leave a run training behind."""
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(command, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        try:
            proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    seconds = time.perf_counter() - start
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode}):\n{tail}")
    return seconds


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it, else as it is."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def precision_of(header: str) -> str | None:
    """The precision a ``selfsup-run`` start-up line reports (``bf16``, ``fp16``, ``fp32``)."""
    match = re.search(r"precision (\w+)", header)
    if not match:
        return None
    return {"bfloat16": "bf16", "float16": "fp16"}.get(match.group(1), match.group(1))


def exit_on_sigterm(signum: int, frame: object) -> None:
    """A SIGTERM handler that unwinds like Ctrl-C (``signal.signal(SIGTERM, exit_on_sigterm)``)."""
    raise SystemExit(128 + signum)
