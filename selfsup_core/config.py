"""TOML configs: loading, ``_base_`` inheritance, ``_delete_``, dotted overrides, dumping.

Vocabulary (MMSelfSup 0.x, in TOML):

* ``_base_ = "a.toml"`` or ``_base_ = ["a.toml", "b.toml"]`` at the top of a file inherits
  from those files (paths relative to the file naming them; bases may have bases). Bases
  are merged in order and may not define the same top-level key; the file's own tables are
  then merged onto the result key by key.
* ``_delete_ = true`` inside a table replaces the inherited table instead of merging.
* Overrides ``a.b=1 c.0.d="x"``: dotted keys, list items by index, values parsed as TOML
  values (a bare word that is not valid TOML is taken as a string).

Every key remembers the file it came from, so that errors point at the right file.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import attrs

from ._compat import tomllib
from .errors import ConfigError, Problem, Problems, describe_exception

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
OVERRIDE_ORIGIN = "--cfg-options"

KeyPath = tuple[Union[str, int], ...]
_MISSING: Any = object()


def format_key(path: Iterable[str | int]) -> str:
    """``("model", "pipelines", 0, "type")`` -> ``"model.pipelines.0.type"``."""
    return ".".join(str(p) for p in path)


def display_path(path: str | os.PathLike[str]) -> str:
    """A file name as errors show it: relative to the working directory when inside it."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    return absolute if relative.startswith("..") else relative


@attrs.define
class Config:
    """A resolved config: plain TOML data plus the file each key came from."""

    data: dict[str, Any]
    filename: str = "<config>"
    origins: dict[KeyPath, str] = attrs.field(factory=dict, repr=False)
    #: the ``KEY=VALUE`` overrides applied on load (recorded in a run's saved config.toml)
    overrides: tuple[str, ...] = attrs.field(default=(), repr=False)
    #: True once the plugins' ``selfsup_process_config`` hooks ran on it (:func:`prepare_config`).
    processed: bool = attrs.field(default=False, repr=False, eq=False, kw_only=True)

    def origin(self, path: Sequence[str | int]) -> str:
        """The file that set ``path`` (or its nearest ancestor that has a record)."""
        key = tuple(path)
        while key:
            if key in self.origins:
                return self.origins[key]
            key = key[:-1]
        return self.filename

    def problem(self, path: Sequence[str | int], message: str) -> Problem:
        """A :class:`Problem` about ``path``, naming the file it came from."""
        return Problem(message, self.origin(path), format_key(path))

    def get(self, path: str | Sequence[str | int], default: Any = _MISSING) -> Any:
        """The value at a dotted path (``"model.backbone.depth"``) or key sequence."""
        node: Any = self.data
        for part in _split(path):
            if isinstance(node, Mapping) and isinstance(part, int):
                part = str(part)  # "a.0" names the key "0" of a table, item 0 of an array
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                if default is _MISSING:
                    raise KeyError(format_key(_split(path))) from None
                return default
        return node

    def set(self, path: str | Sequence[str | int], value: Any, *, origin: str = OVERRIDE_ORIGIN) -> None:
        """Set a value, creating tables on the way; ``origin`` is recorded for error messages."""
        keys = _split(path)
        written, node, problem = _assign(self.data, keys, value)
        if problem:
            raise ConfigError(Problem(problem, origin, format_key(keys)))
        _record(self.origins, written, node, origin)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def to_toml(self) -> str:
        """The resolved config as TOML (no ``_base_``: everything inherited is spelled out)."""
        return dump_toml(self.data)


_INDEX = re.compile(r"0|-?[1-9][0-9]*")


def _split(path: str | Sequence[str | int]) -> KeyPath:
    if isinstance(path, str):
        return tuple(int(p) if _INDEX.fullmatch(p) else p for p in path.split("."))
    return tuple(path)


# -- loading ------------------------------------------------------------------------------
def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Config:
    """Load a TOML config with its ``_base_`` chain and apply ``overrides`` (``"a.b=1"``)."""
    data, origins = _load(Path(path), ())
    overrides = tuple(overrides)
    config = Config(data, display_path(path), origins, overrides=overrides)
    apply_overrides(config, overrides)
    return config


def read_config_text(path: Path, shown: str) -> str:
    """The UTF-8 text of a config file; a missing or unreadable file is a
    :class:`ConfigError` naming it as ``shown``."""
    try:
        return path.read_bytes().decode("utf-8")  # no newline translation: a lone CR is refused, not read as LF
    except FileNotFoundError:
        raise ConfigError(f"config file not found ({os.path.abspath(path)})", file=shown) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {describe_exception(exc)}", file=shown) from None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; a syntax error names the file, line, column and line text."""
    shown = display_path(path)
    text = read_config_text(path, shown)
    if "\r" in text.replace("\r\n", ""):
        line_no = text.count("\n", 0, text.replace("\r\n", "\n\n").find("\r")) + 1
        raise ConfigError("invalid TOML: a carriage return (CR) without a line feed; TOML lines end in LF or CR LF "
                          "(convert the file, e.g. with dos2unix -c mac)", file=f"{shown}:{line_no}")
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"invalid TOML: tables or arrays nested too deeply (more than Python can parse); "
                          f"a config needs at most {MAX_DEPTH} levels", file=shown) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = re.search(r"\(at line (\d+), column (\d+)\)|\(at end of document\)", message)
        if where:
            if where.group(1):
                line_no, column, suffix = int(where.group(1)), int(where.group(2)), ""
            else:
                line_no, column, suffix = text.count("\n") + 1, len(text) - text.rfind("\n"), " at end of document"
            lines = text.splitlines()
            shown = f"{shown}:{line_no}:{column}"
            message = message[: where.start()].strip() + suffix
            if 0 < line_no <= len(lines):
                message += f" in line {lines[line_no - 1].strip()!r}"
        raise ConfigError(f"invalid TOML: {message}", file=shown) from None
    depth_problem = too_deep(data)
    if depth_problem:
        raise ConfigError(depth_problem, file=shown)
    return data


def _load(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[KeyPath, str]]:
    shown = display_path(path)
    data = read_toml(path)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError("must be a path or a list of paths to TOML files", file=shown, key=BASE_KEY)
    merged: dict[str, Any] = {}
    origins: dict[KeyPath, str] = {}
    defined_in: dict[str, str] = {}
    here = path.resolve()
    for index, base in enumerate(bases):
        key = BASE_KEY if len(bases) == 1 else f"{BASE_KEY}.{index}"
        base_path = _scoped_base(base, shown, key) if "::" in base else (path.parent / base).resolve()
        if len(chain) >= MAX_DEPTH:
            raise ConfigError(f"_base_ files inherit more than {MAX_DEPTH} levels deep; flatten the chain", file=shown, key=key)
        if base_path == here or base_path in chain:
            cycle = " -> ".join(display_path(p) for p in (*chain, here, base_path))
            raise ConfigError(f"_base_ files include each other in a cycle: {cycle}", file=shown, key=key)
        if not base_path.is_file():
            raise ConfigError(
                f"base file {base!r} not found (looked for {base_path}); "
                "_base_ paths are relative to the file that names them",
                file=shown,
                key=key,
            )
        base_data, base_origins = _load(base_path, (*chain, here))
        for top in base_data:
            if top in defined_in:
                raise ConfigError(
                    f"defined in two bases, {defined_in[top]} and {display_path(base_path)}; "
                    "keep it in one base only",
                    file=shown,
                    key=top,
                )
            defined_in[top] = display_path(base_path)
        merged.update(base_data)
        origins.update(base_origins)
    _merge(merged, data, (), origins, shown)
    return merged, origins


def _scoped_base(base: str, shown: str, key: str) -> Path:
    """A packaged config ``"dist::path.toml"`` (see :mod:`selfsup_core.packaged_configs`)."""
    from .packaged_configs import resolve

    try:
        return resolve(base)
    except ValueError as exc:
        raise ConfigError(f"base {base!r}: {exc}", file=shown, key=key) from None


def _merge(base: dict[str, Any], child: Mapping[str, Any], path: KeyPath, origins: dict[KeyPath, str], file: str) -> None:
    for key, value in child.items():
        here = (*path, key)
        if isinstance(value, dict):
            value = dict(value)
            replace = value.pop(DELETE_KEY, False)
            if not isinstance(replace, bool):
                raise ConfigError("must be true or false", file=file, key=format_key((*here, DELETE_KEY)))
            if not replace and key in base:
                if isinstance(base[key], dict):
                    origins[here] = file
                    _merge(base[key], value, here, origins, file)
                    continue
                raise ConfigError(
                    f"is a table here but {_a(_toml_type(base[key]))} in {origins.get(here, 'a base file')}; "
                    f"set {DELETE_KEY} = true in this table to replace it",
                    file=file,
                    key=format_key(here),
                )
        base[key] = strip_delete(value)
        _record(origins, here, base[key], file)


def strip_delete(value: Any) -> Any:
    """``value`` with every ``_delete_`` key removed, at any depth (lists and tuples too)."""
    if isinstance(value, dict):
        return {k: strip_delete(v) for k, v in value.items() if k != DELETE_KEY}
    if isinstance(value, (list, tuple)):
        return type(value)(strip_delete(v) for v in value)
    return value


def _record(origins: dict[KeyPath, str], path: KeyPath, value: Any, file: str) -> None:
    """``file`` set ``value`` at ``path``: forget what was recorded under it before."""
    for old in [k for k in origins if k[: len(path)] == path]:
        del origins[old]
    origins[path] = file
    for sub, _ in _walk(value, path):
        origins[sub] = file


def _walk(value: Any, path: KeyPath) -> Iterator[tuple[KeyPath, Any]]:
    items: Iterable[tuple[Any, Any]] = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    for key, sub in items:
        yield (*path, key), sub
        yield from _walk(sub, (*path, key))


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _toml_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


#: how deep tables, arrays, dotted keys and _base_ chains may nest (far beyond any real config;
#: deeper ones would end in RecursionError in the builder)
MAX_DEPTH = 64


def too_deep(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """``"tables or arrays nested more than N levels deep ..."`` when ``value`` nests deeper
    than ``limit`` (counted without recursion), else None. Called on every file read and
    every override value."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return f"tables or arrays nested more than {limit} levels deep; a config needs far fewer"
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return None


# -- overrides ------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[KeyPath, Any]:
    """``"model.backbone.depth=18"`` -> ``(("model", "backbone", "depth"), 18)``.

    Values parse as TOML (``1``, ``0.5``, ``true``, ``"text"``, ``[1, 2]``, ``{a = 1}``); a bare
    word that is not valid TOML (``ResNet``) is taken as a string. Raises ``ValueError`` with
    the reason.
    """
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep:
        raise ValueError("expected KEY=VALUE, e.g. optimizer.lr=0.3")
    if not key or any(not part for part in key.split(".")):
        raise ValueError("the key is empty or has an empty part between dots")
    if key.count(".") >= MAX_DEPTH:
        raise ValueError(f"the key has more than {MAX_DEPTH} dotted parts")
    if not raw:
        raise ValueError('the value is empty; give a TOML value, e.g. name="" for an empty string')
    try:
        parsed = tomllib.loads(f"v = {raw}")
        if len(parsed) != 1:
            raise ValueError(f"{raw!r} is more than one TOML value; give one value per KEY=VALUE")
        value = parsed["v"]
        if too_deep(value):
            raise ValueError(f"the value is nested more than {MAX_DEPTH} levels deep")
    except RecursionError:
        raise ValueError("the value is nested too deeply to parse") from None
    except tomllib.TOMLDecodeError as exc:
        if raw[0] in "[{\"'" or not re.fullmatch(r"[\w./:+-]+", raw):
            raise ValueError(f"{raw!r} is not a valid TOML value ({exc})") from None
        value = raw
    return _split(key), value


def apply_overrides(config: Config, overrides: Iterable[str]) -> None:
    """Apply ``KEY=VALUE`` overrides in order; all bad ones are reported together."""
    problems = Problems()
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ValueError as exc:
            problems.append(Problem(f"bad {OVERRIDE_ORIGIN} {text!r}: {exc}", config.filename))
            continue
        written, node, problem = _assign(config.data, keys, value)
        if problem:
            problems.append(Problem(f"bad {OVERRIDE_ORIGIN} {text!r}: {problem}", config.filename, format_key(keys)))
        else:
            _record(config.origins, written, node, OVERRIDE_ORIGIN)
    problems.raise_if_any()


def _assign(data: dict[str, Any], keys: KeyPath, value: Any) -> tuple[KeyPath, Any, str | None]:
    """Set ``data[keys...] = value``, creating missing tables on the way.

    Returns ``(path, node, problem)``: the path of the outermost node written (the first
    table created, else ``keys`` itself) as stored, i.e. table keys as strings and array
    indexes counted from the front; that node; and why it cannot be done, or None.
    """
    node: Any = data
    stored: list[str | int] = []
    created: tuple[KeyPath, Any] | None = None
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = format_key(keys[:depth]) or "the config"
        if isinstance(node, list):
            if not isinstance(key, int):
                return (), None, f"{where} is an array; index it with a number, not {key!r}"
            if not -len(node) <= key < len(node):
                return (), None, f"index {key} is out of range ({where} has {len(node)} items)"
            key %= len(node)
        elif isinstance(node, dict):
            key = str(key)
            if not last and key not in node:
                node[key] = {}
                if created is None:
                    created = ((*stored, key), node[key])
        else:
            return (), None, f"{where} is {_a(_toml_type(node))}, not a table or array"
        stored.append(key)
        if last:
            node[key] = value
        else:
            node = node[key]
    written, node = created or (tuple(stored), value)
    return written, node, None


# -- dumping --------------------------------------------------------------------------------
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dump_toml(data: Mapping[str, Any]) -> str:
    """Serialise plain config data (tables, arrays, strings, numbers, booleans) as TOML."""
    lines: list[str] = []
    _emit_table(lines, data, ())
    return "\n".join(lines).lstrip("\n") + "\n"


#: Arrays of tables written inline, one table per line, as configs write transform pipelines
#: (``[[data.train.pipeline]]`` blocks would be valid but hard to read).
_INLINE_TABLE_ARRAYS = frozenset({"pipeline", "transforms"})


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _is_small_leaf(value: Any, path: tuple[str, ...]) -> bool:
    """A short table of plain values two or more levels deep (``norm_cfg``, ``init_cfg``, a
    ``data_source``): written inline, ``norm_cfg = {type = "BN"}``, as configs write them."""
    return (isinstance(value, dict) and bool(value) and len(path) >= 2
            and not any(isinstance(v, dict) or _is_table_array(v) for v in value.values())
            and len(_value(value)) <= 80)


def _emit_table(lines: list[str], table: Mapping[str, Any], path: tuple[str, ...]) -> None:
    nested = []
    for key, value in table.items():
        if _is_small_leaf(value, path):
            lines.append(f"{_key(key)} = {_value(value)}")
        elif isinstance(value, dict) or (_is_table_array(value) and key not in _INLINE_TABLE_ARRAYS):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_array_lines(value, 0) if isinstance(value, (list, tuple)) else _value(value)}")
    for key, value in nested:
        header = ".".join(_key(k) for k in (*path, key))
        if isinstance(value, dict):
            lines += ["", f"[{header}]"]
            _emit_table(lines, value, (*path, key))
        else:
            for item in value:
                lines += ["", f"[[{header}]]"]
                _emit_table(lines, item, (*path, key))


_LINE_WIDTH = 100


def _array_lines(value: list[Any] | tuple[Any, ...], indent: int) -> str:
    """An array on one line when it fits in :data:`_LINE_WIDTH`, else one item per line
    (nested arrays likewise; inline tables always stay on one line, as TOML requires), e.g.
    a pipeline of transforms."""
    flat = _value(value)
    if len(flat) + indent <= _LINE_WIDTH or not value:
        return flat
    inner = " " * (indent + 4)
    items = [_array_lines(v, indent + 4) if isinstance(v, (list, tuple)) else _value(v) for v in value]
    return "[\n" + "".join(f"{inner}{item},\n" for item in items) + " " * indent + "]"


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # JSON escapes are TOML escapes, but TOML also forbids a raw DEL (U+007F) in strings.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot write a {type(value).__name__} ({value!r}) as a TOML value")
