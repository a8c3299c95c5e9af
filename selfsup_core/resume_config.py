"""The config a resumed run uses: the run's own saved ``WORK_DIR/config.toml``.

A run writes its fully resolved config (``--cfg-options``, ``--seed`` and ``--deterministic``
included) to ``WORK_DIR/config.toml``, headed by the file it was resolved from and the
overrides given (:func:`saved_config_text`). ``selfsup-run CONFIG --resume`` then continues
with that saved config, so the ``continue with: ...`` line a stopped run prints reproduces the
run exactly. Resuming with another config file, an edited one, or new ``--cfg-options`` that
change the saved config is refused with one line naming the changed keys, unless
``--resume-with-changes`` is given: then the changes are printed, the old config is kept as
``config.prev.toml`` and the run goes on with the new one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config import Config, format_key
from .errors import ConfigError

SAVED_NAME = "config.toml"
PREVIOUS_NAME = "config.prev.toml"
_SOURCE_PREFIX = "# resolved from "
_OVERRIDES_PREFIX = "# overrides: "
#: Command-line flags recorded in the saved config (so that ``--resume`` without them repeats them).
FLAG_KEYS = (("seed", "--seed"), ("deterministic", "--deterministic"))
_SHOWN_CHANGES = 5


def saved_config_text(config: Config) -> str:
    """The text of ``WORK_DIR/config.toml`` for ``config``: a header naming the source file
    and the overrides it was resolved with, then the resolved TOML. Called by the trainer
    when a run starts."""
    overrides = list(getattr(config, "overrides", ()) or ())
    header = f"{_SOURCE_PREFIX}{config.filename}\n"
    if overrides:
        header += f"{_OVERRIDES_PREFIX}{json.dumps(overrides)}\n"
    return header + config.to_toml()


def read_header(path: Path) -> tuple[str | None, list[str]]:
    """The source file name and overrides recorded in a saved config's header (None, [] when absent)."""
    source: str | None = None
    overrides: list[str] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(_SOURCE_PREFIX):
                    source = line[len(_SOURCE_PREFIX):].rstrip("\n")
                elif line.startswith(_OVERRIDES_PREFIX):
                    try:
                        found = json.loads(line[len(_OVERRIDES_PREFIX):])
                    except ValueError:
                        found = []
                    overrides = [str(o) for o in found] if isinstance(found, list) else []
                elif not line.startswith("#"):
                    break
    except (OSError, UnicodeDecodeError):
        pass
    return source, overrides


def apply_flags(config: Config, args: argparse.Namespace) -> None:
    """Write ``--seed`` / ``--deterministic`` into ``config`` (recorded in config.toml; a
    negative or too large seed is then refused by the settings check, naming the flag)."""
    for key, flag in FLAG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            config.set((key,), value, origin=flag)
            config.overrides = (*config.overrides, f"{key}={json.dumps(value)}")


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def diff(old: Any, new: Any, path: tuple[Any, ...] = ()) -> list[str]:
    """``"key: old -> new"`` for every leaf that differs between two config data trees."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        lines: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            lines += diff(old.get(key, "<unset>"), new.get(key, "<unset>"), (*path, key))
        return lines
    if old == new and type(old) is type(new):
        return []
    return [f"{format_key(path) or '<config>'}: {_short(old)} -> {_short(new)}"]


def _short(value: Any) -> str:
    text = value if value == "<unset>" else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_for_resume(
    args: argparse.Namespace,
    load: Callable[[str, list[str]], Config],
    work_dir_of: Callable[[Config], Path],
) -> tuple[Config, Path | None]:
    """The config a ``train`` command runs with, and the work dir it resolved (None: the
    trainer's default). Called by the CLI before training.

    ``load(path, overrides)`` loads a config the way every command does (plugins' hooks
    included); ``work_dir_of(config)`` is the trainer's default work dir for a config. Without
    ``--resume``, or without a saved config in the work dir, this is ``CONFIG`` with the
    overrides and flags. Otherwise the saved config, unless the request changes it (refused
    without ``--resume-with-changes``)."""
    requested = load(args.config, list(args.cfg_options))
    apply_flags(requested, args)
    if not getattr(args, "resume", None):
        return requested, None
    work_dir = Path(args.work_dir) if args.work_dir else work_dir_of(requested)
    if not args.work_dir and Path(args.config).name == SAVED_NAME:  # selfsup-run WORK_DIR/config.toml --resume
        work_dir = Path(args.config).parent
    saved_path = work_dir / SAVED_NAME
    if not saved_path.is_file():
        return requested, work_dir
    source, recorded = read_header(saved_path)
    saved = load(str(saved_path), [])
    given = list(args.cfg_options)
    if _same_file(args.config, saved_path):  # the saved file itself (+ new overrides)
        wanted = load(str(saved_path), given)
        wanted.filename, wanted.overrides = source or wanted.filename, (*recorded, *given)
    elif source is not None and _same_file(args.config, source):  # the run's own source file
        wanted = load(args.config, recorded + given)
    else:  # another file: compared as it is
        wanted = requested
    if wanted is not requested:
        apply_flags(wanted, args)
    changes = diff(saved.data, wanted.data)
    if not changes:
        saved.filename = source or saved.filename
        saved.overrides = tuple(recorded)
        return saved, work_dir
    shown = "; ".join(changes[:_SHOWN_CHANGES]) + (f"; and {len(changes) - _SHOWN_CHANGES} more"
                                                   if len(changes) > _SHOWN_CHANGES else "")
    if not getattr(args, "resume_with_changes", False):
        raise ConfigError(
            f"--resume would change the run's saved config in {len(changes)} key(s) ({shown}); continue the run as "
            f"it was with: selfsup-run {source or saved_path} --work-dir {work_dir} --resume, or pass "
            "--resume-with-changes to apply the changes", file=str(saved_path))
    if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun: the main process reports and keeps the file
        print(f"resuming with changes to {saved_path} (the old one is kept as {PREVIOUS_NAME}):", file=sys.stderr)
        for line in changes:
            print(f"  {line}", file=sys.stderr)
        shutil.copyfile(saved_path, work_dir / PREVIOUS_NAME)
    return wanted, work_dir
