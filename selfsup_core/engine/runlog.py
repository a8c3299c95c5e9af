"""``run.log``: the console output of a run, also written to its work dir.

:class:`TeeStream` stands in for the stream the run's :class:`~selfsup_core.engine.logger.RunLogger`
writes progress and messages to: everything goes to the console unchanged and to ``run.log``
(appended, so a resumed run continues the same file) as plain lines: an in-place progress
bar's updates (``"\\r\\033[K" + line``) become one line each, and the newline that later ends
the bar on the console is not doubled in the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import IO

RUN_LOG = "run.log"
_BAR_PREFIX = "\r\033[K"


class TeeStream:
    """Writes to ``stream`` and to the file ``path`` (opened for appending, line-buffered)."""

    def __init__(self, stream: IO[str], path: Path) -> None:
        self.stream = stream
        self.path = Path(path)
        self._file: IO[str] | None = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._bar_open = False

    def write(self, text: str) -> int:
        """Write ``text`` to the console, and its plain-line form to ``run.log``."""
        written = self.stream.write(text)
        if self._file is not None:
            if text.startswith(_BAR_PREFIX):
                self._file.write(text[len(_BAR_PREFIX):] + "\n")
                self._bar_open = True
            elif self._bar_open and text.startswith("\n"):
                self._bar_open = False
                if text[1:]:
                    self._file.write(text[1:])
            else:
                self._bar_open = False
                self._file.write(text)
        return written if isinstance(written, int) else len(text)

    def flush(self) -> None:
        self.stream.flush()
        if self._file is not None:
            self._file.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def close(self) -> None:
        """Close ``run.log`` (the console stream stays open)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def append_to_run_log(work_dir: str | Path, text: str) -> None:
    """Add ``text`` (e.g. the summary the command prints after the run) to ``work_dir/run.log``;
    a work dir that cannot be written is left alone (the text was printed anyway)."""
    try:
        with open(Path(work_dir) / RUN_LOG, "a", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
    except OSError:
        pass


__all__ = ["RUN_LOG", "TeeStream", "append_to_run_log"]
