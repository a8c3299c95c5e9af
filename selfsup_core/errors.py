"""Errors meant for the user.

Every error here is a :class:`SelfSupError`: its message is complete and final, the CLI
prints it as it is (one line per problem) and exits with status 2. A problem found in a
config names the file it came from and the dotted key path inside it, e.g.::

    simclr.toml: model.neck.hid_channel: unknown argument of NonLinearNeck (selfsup-models 0.1.0); did you mean 'hid_channels'?
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from typing import Any

import attrs


class SelfSupError(Exception):
    """Base class of the errors that end a command with a message instead of a traceback."""


@attrs.frozen
class Problem:
    """One thing wrong with a config: what, in which file, under which dotted key."""

    message: str
    file: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key, self.message) if part)


class ConfigError(SelfSupError):
    """A config cannot be loaded, merged, validated or built; lists every problem found."""

    def __init__(
        self,
        problems: str | Problem | Iterable[Problem],
        *,
        file: str | None = None,
        key: str | None = None,
    ) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems, file, key)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Problems:
    """The problems one validation pass finds, raised together as one :class:`ConfigError`.

    A pass makes one collector for the table it checks (``config``: the whole config, to
    name the file each key came from; ``path``: where the table sits in it), calls
    :meth:`add` for every problem it finds and :meth:`raise_if_any` where it cannot go on
    (and once at the end), so the user sees every problem at once, one line each. A line
    already collected is not added twice.
    """

    def __init__(self, config: Any = None, path: Iterable[str | int] = ()) -> None:
        self.config, self.path = config, tuple(path)
        self.items: list[Problem] = []

    def add(self, keys: Iterable[str | int], message: str) -> Problem:
        """Collect ``message`` about the key ``path + keys`` (``keys = ()``: the table itself)."""
        full = (*self.path, *keys)
        if self.config is not None:
            problem = self.config.problem(full, message)
        else:
            problem = Problem(message, None, ".".join(str(k) for k in full))
        return self.append(problem)

    def append(self, problem: Problem) -> Problem:
        """Collect a ready-made :class:`Problem` (kept once however often it is given)."""
        if problem not in self.items:
            self.items.append(problem)
        return problem

    def extend(self, problems: Iterable[Problem]) -> None:
        """Collect several ready-made problems (a nested pass's :class:`ConfigError`)."""
        for problem in problems:
            self.append(problem)

    def __iadd__(self, problems: Iterable[Problem]) -> Problems:
        self.extend(problems)
        return self

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.items)

    def raise_if_any(self) -> None:
        """Raise one :class:`ConfigError` listing every problem collected so far, if any."""
        if self.items:
            raise ConfigError(self.items)


class UnknownComponentError(SelfSupError, LookupError):
    """No component of ``kind`` is called ``name``."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        self.kind, self.name = kind, name
        message = f"unknown {kind} type {name!r}{did_you_mean(name, known)}"
        message += hint or f" (run 'selfsup-run list {kind}' to see what is installed)"
        super().__init__(message)


class DuplicateComponentError(SelfSupError):
    """Two distributions provide a component of the same kind under the same name."""

    def __init__(self, kind: str, name: str, providers: Iterable[str], hint: str = "") -> None:
        self.kind, self.name = kind, name
        self.providers = tuple(providers)
        super().__init__(f"{kind} {name!r} is provided by {' and by '.join(self.providers)}{hint}")


class PluginLoadError(SelfSupError):
    """A plugin or component failed to import; the original exception is chained as ``__cause__``."""


_WORKER_HEADER = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def unwrap_worker_message(text: str) -> str | None:
    """The original message inside the text torch's DataLoader gives an exception raised in a
    worker process (``"Caught X in DataLoader worker process N.\nOriginal Traceback ...
    pkg.X: <message>"``), or None when ``text`` is not such a text.

    Called by the CLI before printing a :class:`SelfSupError`, and by exception classes that
    torch rebuilds from that text (``BadSampleError``), so the user sees the one line the
    worker raised instead of a traceback."""
    match = _WORKER_HEADER.match(text)
    if match is None:
        return None
    name = match.group(1)
    lines = text.rstrip("\n").splitlines()
    for i in range(len(lines) - 1, 0, -1):
        head, sep, rest = lines[i].partition(": ")
        if sep and not head.startswith(" ") and (head == name or head.endswith("." + name)):
            return "\n".join([rest, *lines[i + 1:]])
    return None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest candidate, or an empty string."""
    pool = list(candidates)
    matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in pool}
        matches = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        matches = [lowered[m] for m in matches]
    return f"; did you mean {matches[0]!r}?" if matches else ""


def describe_exception(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line, for embedding an exception in a message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
