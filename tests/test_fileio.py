"""``selfsup_core.fileio.atomic_write``: all or nothing, no temporary file left, and the
permissions ``open()`` would give."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from selfsup_core.fileio import atomic_write, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "latest.pth"
    target.write_bytes(b"old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pth"]


def test_the_new_file_replaces_the_old_with_umask_permissions(tmp_path: Path) -> None:
    old_mask = os.umask(0o027)
    try:
        written = atomic_write_text(tmp_path / "sub" / "new.toml", "a = 1\n")
    finally:
        os.umask(old_mask)
    assert written.read_text() == "a = 1\n"
    if os.name == "posix":
        assert stat.S_IMODE(written.stat().st_mode) == 0o640
    atomic_write(written, lambda handle: handle.write(b"b = 2\n"), durable=False)
    assert written.read_text() == "b = 2\n" and len(list(written.parent.iterdir())) == 1
