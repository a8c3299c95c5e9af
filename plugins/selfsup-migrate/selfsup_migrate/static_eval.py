"""A safe static evaluator for MMCV-style Python config files (MMSelfSup 0.x, OpenSelfSup).

The file is parsed with :mod:`ast` and only what can be known without running it is
evaluated: literals; list, tuple, set and dict displays (``{**a, 'k': v}``); names assigned
earlier; subscripts into known lists and dicts; arithmetic, comparisons, boolean operators,
``a if c else b`` and f-strings on known values; a small allow-list of calls (``dict``,
``list``, ``tuple``, ``set``, ``len``, ``min``, ``max``, ``round``, ``int``, ``float``,
``str``, ``bool``, ``abs``, ``range``, ``sum``, ``sorted``; ``copy.deepcopy`` / ``deepcopy``
after ``import copy`` / ``from copy import deepcopy``) and of methods of known lists, dicts
and strings (``append``, ``extend``, ``insert``, ``update``, ``get``, ``format`` ...).
Statements: assignments (also to tuples, subscripts and ``+=``), expression statements
(method calls), ``if``/``elif``/``else`` on known values (only the taken branch is
evaluated), ``del``, ``pass`` and imports (an import other than ``copy`` is an error only
where the imported name is used).

Nothing in the file is ever executed: no ``exec``, ``eval`` or ``compile`` to code. What
cannot be evaluated is reported as ``FILE:LINE: cannot evaluate statically: <source>
(<why>)``; every such problem of a file is collected and raised at once in one
:class:`~selfsup_core.errors.ConfigError`. A statement that depends on one that failed is
not reported again.

The work is bounded, so a hostile file cannot exhaust time or memory: no value may hold more
than :data:`MAX_TOTAL` items counted through all its levels or nest deeper than
:data:`MAX_DEPTH`; no expression may nest deeper than :data:`MAX_DEPTH`; a file may take at
most :data:`MAX_STEPS` evaluation steps; the size checks of a config and all its bases may
count at most :data:`MAX_WORK` items; a ``_base_`` chain may be :data:`MAX_BASE_DEPTH` files
deep and read :data:`MAX_FILES` files. Reaching a bound refuses the file with one line.

MMCV semantics (``mmcv.Config.fromfile`` of mmcv 1.x, which MMSelfSup 0.x and OpenSelfSup
use): ``_base_`` (a path or a list of paths relative to the file) names base files, read
recursively; bases may not define the same top-level key; the file's dicts are merged key by
key into the bases' (lists and other values are replaced); ``_delete_=True`` in a dict
replaces the inherited dict instead. Names defined in a base are *not* Python names in the
file that includes it; ``{{_base_.a.b}}`` (bare, or as a whole quoted string) is the merged
bases' value at ``a.b``. Names starting with ``__`` and imported modules are not config keys.
"""
from __future__ import annotations

import ast
import copy
import operator
import os
import re
import string
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selfsup_core.api import DELETE_KEY, ConfigError, Problem, display_path, read_config_text, strip_delete

BASE_KEY = "_base_"
#: ``{{ _base_.a.b }}``, optionally as the whole content of a quoted string.
BASE_REF = re.compile(r"""(?P<q>['"]?)\{\{\s*_base_\.(?P<path>[A-Za-z_][\w.]*?)\s*\}\}(?P=q)""")
_REF_NAME = "__selfsup_base_ref_{}__"
_REF_NAME_RE = re.compile(r"__selfsup_base_ref_(\d+)__")
#: Longest string / list a multiplication or ``range`` may make, and largest exponent.
MAX_SIZE = 1_000_000
MAX_EXPONENT = 10_000
#: Bounds on the work: items in one value counted through every nesting level (shared
#: sub-lists count each time they occur), nesting depth of an expression or value, expression
#: nodes evaluated in one file, items counted by the size checks for a config and its bases.
MAX_TOTAL = 2_000_000
MAX_DEPTH = 100
MAX_STEPS = 1_000_000
MAX_WORK = 10_000_000
#: Bounds on a ``_base_`` chain: files deep, and files read in all.
MAX_BASE_DEPTH = 32
MAX_FILES = 256


class StaticEvalError(Exception):
    """One expression or statement cannot be evaluated; ``node`` is where, the message why."""

    def __init__(self, node: ast.AST, why: str) -> None:
        super().__init__(why)
        self.node = node
        self.why = why


class EvaluationLimit(Exception):
    """A bound on the evaluator's work was reached (see :data:`MAX_TOTAL` ...): the whole file
    is refused at once, with this one problem."""

    def __init__(self, node: ast.AST, why: str) -> None:
        super().__init__(why)
        self.node = node
        self.why = why


class _Poisoned(Exception):
    """A name whose assignment already failed (and was reported) is used again."""


class _Unknown:
    """The value of a name whose assignment failed."""


class _Module:
    """An imported module: ``copy`` can be used, others only exist (``used`` is an error)."""

    def __init__(self, name: str, line: int, usable: bool) -> None:
        self.name, self.line, self.usable = name, line, usable


class _Function:
    """An allowed function bound to a name (``deepcopy`` from ``from copy import deepcopy``)."""

    def __init__(self, name: str, func: Callable[..., Any]) -> None:
        self.name, self.func = name, func


class _BoundMethod:
    """``obj.method`` of an allowed method of a known list, dict or string."""

    def __init__(self, obj: Any, name: str) -> None:
        self.obj, self.name = obj, name


# -- allowed functions and methods --------------------------------------------------------------
def _checked_range(*args: Any) -> list[int]:
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise TypeError("range() takes integers")
    values = range(*args)
    if len(values) > MAX_SIZE:
        raise ValueError(f"range of {len(values)} items is too large")
    return list(values)


def _checked_sum(items: Any, start: Any = 0) -> Any:
    """``sum`` that refuses to concatenate sequences beyond :data:`MAX_SIZE` items."""
    total = start
    for item in items:
        if isinstance(total, (list, tuple, str)) and isinstance(item, (list, tuple, str)) \
                and len(total) + len(item) > MAX_SIZE:
            raise ValueError("the result would be too large")
        total = total + item
    return total


def _as_list(func: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args, **kwargs: list(func(*args, **kwargs))


BUILTINS: dict[str, Callable[..., Any]] = {
    "dict": dict, "list": list, "tuple": tuple, "set": set, "len": len, "min": min, "max": max,
    "round": round, "int": int, "float": float, "str": str, "bool": bool, "abs": abs,
    "range": _checked_range, "sum": _checked_sum, "sorted": sorted,
}
CONSTANTS = {"True": True, "False": False, "None": None}
COPY_FUNCTIONS = {"deepcopy": copy.deepcopy, "copy": copy.copy}
METHODS: dict[type, dict[str, Callable[..., Any]]] = {
    dict: {
        "update": dict.update, "get": dict.get, "copy": dict.copy, "pop": dict.pop, "setdefault": dict.setdefault,
        "keys": _as_list(dict.keys), "values": _as_list(dict.values), "items": _as_list(dict.items),
    },
    list: {
        "append": list.append, "extend": list.extend, "insert": list.insert, "pop": list.pop, "copy": list.copy,
        "index": list.index, "count": list.count, "remove": list.remove, "reverse": list.reverse,
    },
    tuple: {"index": tuple.index, "count": tuple.count},
    str: {
        "format": str.format, "join": str.join, "replace": str.replace, "upper": str.upper, "lower": str.lower,
        "split": str.split, "strip": str.strip, "startswith": str.startswith, "endswith": str.endswith,
    },
}
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_, ast.Invert: operator.invert,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_, ast.IsNot: operator.is_not,
}
#: Value types the evaluator computes with (everything a config holds).
DATA_TYPES = (type(None), bool, int, float, str, list, tuple, dict, set)


def _describe(node: ast.AST) -> str:
    """A short name for a syntax node's kind, for messages (``a lambda``, ``a for loop``)."""
    names = {
        ast.Lambda: "a lambda", ast.For: "a for loop", ast.While: "a while loop", ast.FunctionDef: "a function definition",
        ast.AsyncFunctionDef: "a function definition", ast.ClassDef: "a class definition", ast.With: "a with block",
        ast.Try: "a try block", ast.ListComp: "a list comprehension", ast.DictComp: "a dict comprehension",
        ast.SetComp: "a set comprehension", ast.GeneratorExp: "a generator expression", ast.Await: "await",
        ast.Yield: "yield", ast.YieldFrom: "yield", ast.NamedExpr: "an assignment expression",
        ast.Global: "a global statement", ast.Nonlocal: "a nonlocal statement", ast.Raise: "raise",
        ast.Assert: "assert", ast.Return: "return",
    }
    return names.get(type(node), f"a {type(node).__name__} node")


# -- preprocessing ------------------------------------------------------------------------------
def substitute_base_refs(text: str) -> tuple[str, list[str]]:
    """Replace every ``{{_base_.a.b}}`` (bare or as a whole quoted string) by a placeholder
    name, keeping line numbers. Returns ``(new text, dotted paths by placeholder index)``."""
    paths: list[str] = []

    def replace(match: re.Match[str]) -> str:
        paths.append(match.group("path").rstrip("."))
        return _REF_NAME.format(len(paths) - 1)

    return BASE_REF.sub(replace, text), paths


def restore_base_refs(text: str, paths: Sequence[str]) -> str:
    """Undo :func:`substitute_base_refs` in a piece of source shown to the user."""
    return _REF_NAME_RE.sub(lambda m: "{{_base_.%s}}" % paths[int(m.group(1))], text)


# -- the evaluator ------------------------------------------------------------------------------
class StaticEvaluator:
    """Evaluates the module-level statements of one config file without running it.

    ``text`` is the file's source after :func:`substitute_base_refs`, ``ref_paths`` the paths
    its placeholders stand for, ``base`` the merged data of its bases (for ``{{_base_.x}}``)
    and ``shown`` the file name used in messages. :meth:`run` returns the namespace.
    """

    def __init__(self, text: str, shown: str, ref_paths: Sequence[str] = (), base: dict[str, Any] | None = None,
                 budget: list[int] | None = None) -> None:
        self.text = text
        self.shown = shown
        self.ref_paths = list(ref_paths)
        self.base = base if base is not None else {}
        self.names: dict[str, Any] = {}
        self.problems: list[Problem] = []
        self.depth = 0
        self.steps = 0
        #: items counted by :meth:`check_deep`, shared by every file of one ``_base_`` chain
        self.budget = budget if budget is not None else [0]

    # statements ---------------------------------------------------------------------------------
    def run(self, tree: ast.Module) -> dict[str, Any]:
        """Evaluate ``tree``'s statements in order; returns the module namespace (imported
        modules included). Problems are collected in :attr:`problems`."""
        self.exec_block(tree.body)
        return self.names

    def exec_block(self, body: Sequence[ast.stmt]) -> None:
        """Evaluate statements in order; a failing one is recorded and the rest still run."""
        for stmt in body:
            try:
                self.exec_stmt(stmt)
            except StaticEvalError as exc:
                self.report(exc.node, exc.why)
                self.poison(stmt)
            except _Poisoned:
                self.poison(stmt)

    def report(self, node: ast.AST, why: str) -> None:
        """Record ``FILE:LINE: cannot evaluate statically: <source> (<why>)``."""
        self.problems.append(self.problem(node, why))

    def problem(self, node: ast.AST, why: str) -> Problem:
        """``FILE:LINE: cannot evaluate statically: <source> (<why>)`` for ``node``."""
        segment = _segment(self.text, node)
        segment = " ".join(restore_base_refs(segment, self.ref_paths).split())
        if len(segment) > 120:
            segment = segment[:117] + "..."
        where = f"{self.shown}:{getattr(node, 'lineno', '?')}"
        return Problem(f"cannot evaluate statically: {segment} ({why})", where)

    # bounds -------------------------------------------------------------------------------------
    def check_deep(self, node: ast.AST, value: Any) -> None:
        """Refuse ``value`` when it holds more than :data:`MAX_TOTAL` items through all its
        nesting levels or nests deeper than :data:`MAX_DEPTH`; the counting is charged to the
        file's work budget (:data:`MAX_WORK`)."""
        total = 0
        stack: list[tuple[Any, int]] = [(value, 0)]
        try:
            while stack:
                item, depth = stack.pop()
                if isinstance(item, str):
                    total += 1 + len(item) // 64
                elif isinstance(item, (list, tuple, set, frozenset)):
                    total += 1 + len(item)
                    if depth >= MAX_DEPTH:
                        raise EvaluationLimit(node, f"values nest more than {MAX_DEPTH} levels deep")
                    stack.extend((sub, depth + 1) for sub in item if isinstance(sub, (list, tuple, dict, str)))
                elif isinstance(item, dict):
                    total += 1 + 2 * len(item)
                    if depth >= MAX_DEPTH:
                        raise EvaluationLimit(node, f"values nest more than {MAX_DEPTH} levels deep")
                    stack.extend((sub, depth + 1) for sub in item.values() if isinstance(sub, (list, tuple, dict, str)))
                else:
                    total += 1
                if total > MAX_TOTAL:
                    raise EvaluationLimit(node, f"the value would hold more than {MAX_TOTAL:,} items")
        finally:
            self.budget[0] += total
        if self.budget[0] > MAX_WORK:
            raise EvaluationLimit(node, "the file takes too much work to evaluate; write the values out")

    def poison(self, stmt: ast.stmt) -> None:
        """Mark the names ``stmt`` would have assigned as unknown (later uses are not reported)."""
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets = list(stmt.targets)
        elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
            targets = [stmt.target]
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            func = stmt.value.func
            if isinstance(func, ast.Attribute):
                targets = [func.value]
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Load)):
                    root = node.id
                    if root in self.names or isinstance(node.ctx, ast.Store):
                        self.names[root] = _Unknown()
                    break

    def exec_stmt(self, stmt: ast.stmt) -> None:
        """Evaluate one statement (see the module docstring for what is supported)."""
        if isinstance(stmt, ast.Assign):
            value = self.eval(stmt.value)
            for target in stmt.targets:
                self.assign(target, value)
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self.assign(stmt.target, self.eval(stmt.value))
        elif isinstance(stmt, ast.AugAssign):
            self.aug_assign(stmt)
        elif isinstance(stmt, ast.Expr):
            if not (isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
                self.eval(stmt.value)  # a docstring is skipped; a call such as x.append(...) runs
        elif isinstance(stmt, ast.If):
            self.exec_block(stmt.body if self.truth(stmt.test) else stmt.orelse)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            self.import_names(stmt)
        elif isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                self.delete(target)
        elif not isinstance(stmt, ast.Pass):
            raise StaticEvalError(stmt, f"{_describe(stmt)} is not evaluated; write the values out")

    def truth(self, node: ast.expr) -> bool:
        """The truth of an ``if`` test, which must be a known value."""
        return bool(self.eval(node))

    def import_names(self, stmt: ast.Import | ast.ImportFrom) -> None:
        """Bind imported names: ``copy`` and ``copy.deepcopy``/``copy.copy`` are usable; any
        other import binds a name whose use is an error."""
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                top = alias.name.split(".")[0]
                bound = alias.asname or top
                usable = alias.name == "copy"
                self.names[bound] = _Module(alias.name if alias.asname else top, stmt.lineno, usable)
            return
        for alias in stmt.names:
            bound = alias.asname or alias.name
            if alias.name == "*":
                raise StaticEvalError(stmt, "'import *' binds unknown names")
            if stmt.module == "copy" and not stmt.level and alias.name in COPY_FUNCTIONS:
                self.names[bound] = _Function(f"copy.{alias.name}", COPY_FUNCTIONS[alias.name])
            else:
                self.names[bound] = _Module(f"{'.' * stmt.level}{stmt.module or ''}.{alias.name}", stmt.lineno, False)

    def assign(self, target: ast.expr, value: Any) -> None:
        """Bind ``value`` to a name, a tuple/list of targets or a subscript."""
        if isinstance(target, ast.Name):
            self.names[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            self.unpack(target, value)
        elif isinstance(target, ast.Subscript):
            container = self.eval(target.value)
            key = self.eval_index(target.slice)
            self.set_item(target, container, key, value)
        else:
            raise StaticEvalError(target, f"cannot assign to {_describe(target)}")

    def unpack(self, target: ast.Tuple | ast.List, value: Any) -> None:
        """``a, b = value`` (one starred target allowed)."""
        if not isinstance(value, (list, tuple, str)):
            raise StaticEvalError(target, f"cannot unpack {type(value).__name__}")
        items = list(value)
        starred = [i for i, t in enumerate(target.elts) if isinstance(t, ast.Starred)]
        if starred:
            i = starred[0]
            after = len(target.elts) - i - 1
            if len(items) < len(target.elts) - 1:
                raise StaticEvalError(target, f"not enough values to unpack (got {len(items)})")
            parts = [*items[:i], items[i:len(items) - after], *items[len(items) - after:]]
        else:
            if len(items) != len(target.elts):
                raise StaticEvalError(target, f"expected {len(target.elts)} values to unpack, got {len(items)}")
            parts = items
        for sub, item in zip(target.elts, parts):
            self.assign(sub.value if isinstance(sub, ast.Starred) else sub, item)

    def set_item(self, node: ast.AST, container: Any, key: Any, value: Any) -> None:
        """``container[key] = value`` on a known dict or list."""
        if not isinstance(container, (dict, list)):
            raise StaticEvalError(node, f"cannot set an item of {type(container).__name__}")
        try:
            container[key] = value
        except (TypeError, IndexError, ValueError) as exc:
            raise StaticEvalError(node, f"{type(exc).__name__}: {exc}") from None
        self.check_deep(node, container)

    def aug_assign(self, stmt: ast.AugAssign) -> None:
        """``x += v`` (and other operators) on a name or subscript; lists extend in place."""
        right = self.eval(stmt.value)
        if isinstance(stmt.target, ast.Name):
            left = self.lookup(stmt.target)
            self.names[stmt.target.id] = self.in_place(stmt, left, right)
        elif isinstance(stmt.target, ast.Subscript):
            container = self.eval(stmt.target.value)
            key = self.eval_index(stmt.target.slice)
            left = self.get_item(stmt.target, container, key)
            self.set_item(stmt.target, container, key, self.in_place(stmt, left, right))
        else:
            raise StaticEvalError(stmt.target, f"cannot assign to {_describe(stmt.target)}")

    def in_place(self, stmt: ast.AugAssign, left: Any, right: Any) -> Any:
        if isinstance(stmt.op, ast.Add) and isinstance(left, list) and isinstance(right, (list, tuple)):
            check_result(stmt, range(len(left) + len(right)))
            left.extend(right)
            self.check_deep(stmt, left)
            return left
        if isinstance(stmt.op, ast.BitOr) and isinstance(left, dict) and isinstance(right, dict):
            left.update(right)
            self.check_deep(stmt, left)
            return left
        return self.binary(stmt, stmt.op, left, right)

    def delete(self, target: ast.expr) -> None:
        """``del name`` or ``del x[key]``."""
        if isinstance(target, ast.Name):
            self.lookup(target)
            del self.names[target.id]
        elif isinstance(target, ast.Subscript):
            container = self.eval(target.value)
            key = self.eval_index(target.slice)
            try:
                del container[key]
            except (KeyError, IndexError, TypeError) as exc:
                raise StaticEvalError(target, f"{type(exc).__name__}: {exc}") from None
        else:
            raise StaticEvalError(target, f"cannot delete {_describe(target)}")

    # expressions --------------------------------------------------------------------------------
    def eval(self, node: ast.expr) -> Any:
        """The value of an expression node; raises :class:`StaticEvalError` where it is not static."""
        method = getattr(self, f"eval_{type(node).__name__}", None)
        if method is None:
            raise StaticEvalError(node, f"{_describe(node)} is not evaluated statically")
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise EvaluationLimit(node, f"more than {MAX_STEPS:,} evaluation steps; write the values out")
        if self.depth >= MAX_DEPTH:
            raise EvaluationLimit(node, f"expressions nest more than {MAX_DEPTH} levels deep")
        self.depth += 1
        try:
            value = method(node)
        finally:
            self.depth -= 1
        if isinstance(value, (_Module, _Function, _BoundMethod)) and not isinstance(node, (ast.Name, ast.Attribute)):
            raise StaticEvalError(node, "only data values can be used here")
        if isinstance(node, _BUILDING) and isinstance(value, (list, tuple, set, dict, str)):
            self.check_deep(node, value)
        return value

    def eval_Constant(self, node: ast.Constant) -> Any:
        if not isinstance(node.value, DATA_TYPES):
            raise StaticEvalError(node, f"{type(node.value).__name__} constants are not config values")
        if isinstance(node.value, str) and _REF_NAME_RE.search(node.value):
            raise StaticEvalError(node, "a {{_base_.x}} reference must be the whole string; "
                                        "it is not substituted inside a longer one")
        return node.value

    def eval_Name(self, node: ast.Name) -> Any:
        return self.lookup(node)

    def lookup(self, node: ast.Name) -> Any:
        """A name's value: assigned earlier, an allowed builtin, or a ``{{_base_.x}}`` placeholder."""
        name = node.id
        ref = _REF_NAME_RE.fullmatch(name)
        if ref:
            return strip_delete(copy.deepcopy(self.base_value(node, self.ref_paths[int(ref.group(1))])))
        if name in self.names:
            value = self.names[name]
            if isinstance(value, _Unknown):
                raise _Poisoned(name)
            if isinstance(value, _Module) and not value.usable:
                raise StaticEvalError(
                    node, f"uses {value.name!r} imported at line {value.line}; only 'copy' may be imported and used"
                )
            return value
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in BUILTINS:
            return _Function(name, BUILTINS[name])
        raise StaticEvalError(node, f"name {name!r} is not defined before this line in this file")

    def base_value(self, node: ast.AST, path: str) -> Any:
        """The merged bases' value at dotted ``path`` (``{{_base_.path}}``)."""
        value: Any = self.base
        for part in path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise StaticEvalError(node, f"the _base_ files define no {path!r}")
        return value

    def eval_List(self, node: ast.List) -> list[Any]:
        return self.elements(node.elts)

    def eval_Tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return tuple(self.elements(node.elts))

    def eval_Set(self, node: ast.Set) -> set[Any]:
        try:
            return set(self.elements(node.elts))
        except TypeError as exc:
            raise StaticEvalError(node, f"TypeError: {exc}") from None

    def elements(self, elts: Sequence[ast.expr]) -> list[Any]:
        """The items of a display, with ``*x`` unpacked."""
        items: list[Any] = []
        for elt in elts:
            if isinstance(elt, ast.Starred):
                value = self.eval(elt.value)
                if not isinstance(value, (list, tuple, set, str, dict)):
                    raise StaticEvalError(elt, f"cannot unpack {type(value).__name__}")
                items.extend(value)
            else:
                items.append(self.eval(elt))
        return items

    def eval_Dict(self, node: ast.Dict) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values):
            if key is None:
                unpacked = self.eval(value)
                if not isinstance(unpacked, dict):
                    raise StaticEvalError(value, f"'**' needs a dict, got {type(unpacked).__name__}")
                result.update(unpacked)
            else:
                result[self.hashable(key, self.eval(key))] = self.eval(value)
        return result

    def hashable(self, node: ast.AST, value: Any) -> Any:
        if isinstance(value, (list, dict, set)):
            raise StaticEvalError(node, f"a {type(value).__name__} cannot be a dict key")
        return value

    def eval_JoinedStr(self, node: ast.JoinedStr) -> str:
        parts = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                parts.append(self.format_value(value))
            else:
                parts.append(self.eval(value))
        return "".join(parts)

    def format_value(self, node: ast.FormattedValue) -> str:
        value = self.eval(node.value)
        if node.conversion == ord("r"):
            value = repr(value)
        elif node.conversion == ord("s"):
            value = str(value)
        elif node.conversion == ord("a"):
            value = ascii(value)
        spec = self.eval(node.format_spec) if node.format_spec is not None else ""
        check_widths(node, spec)
        try:
            return format(value, spec)
        except (TypeError, ValueError) as exc:
            raise StaticEvalError(node, f"{type(exc).__name__}: {exc}") from None

    def eval_Subscript(self, node: ast.Subscript) -> Any:
        container = self.eval(node.value)
        return self.get_item(node, container, self.eval_index(node.slice))

    def eval_index(self, node: ast.AST) -> Any:
        """A subscript's key: a value or a slice (``Index`` wrappers of Python < 3.9 unwrapped)."""
        if isinstance(node, ast.Slice):
            parts = [self.eval(p) if p is not None else None for p in (node.lower, node.upper, node.step)]
            return slice(*parts)
        if type(node).__name__ == "Index":  # Python 3.8
            return self.eval(node.value)  # type: ignore[attr-defined]
        return self.eval(node)  # type: ignore[arg-type]

    def get_item(self, node: ast.AST, container: Any, key: Any) -> Any:
        if not isinstance(container, (dict, list, tuple, str)):
            raise StaticEvalError(node, f"cannot index {type(container).__name__}")
        try:
            return container[key]
        except (KeyError, IndexError, TypeError) as exc:
            raise StaticEvalError(node, f"{type(exc).__name__}: {exc}") from None

    def eval_Attribute(self, node: ast.Attribute) -> Any:
        owner = self.eval(node.value)
        if isinstance(owner, _Module):
            if owner.name == "copy" and node.attr in COPY_FUNCTIONS:
                return _Function(f"copy.{node.attr}", COPY_FUNCTIONS[node.attr])
            raise StaticEvalError(node, f"'{owner.name}.{node.attr}' is not evaluated (only copy.deepcopy and copy.copy)")
        methods = METHODS.get(type(owner), {})
        if node.attr in methods:
            return _BoundMethod(owner, node.attr)
        raise StaticEvalError(node, f"attribute {node.attr!r} of a {type(owner).__name__} is not evaluated")

    def eval_Call(self, node: ast.Call) -> Any:
        try:
            func = self.eval(node.func)
        except StaticEvalError as exc:
            raise StaticEvalError(node, exc.why) from None
        args = self.elements(node.args)
        kwargs: dict[str, Any] = {}
        for keyword in node.keywords:
            value = self.eval(keyword.value)
            if keyword.arg is None:
                if not isinstance(value, dict):
                    raise StaticEvalError(keyword.value, f"'**' needs a dict, got {type(value).__name__}")
                kwargs.update(value)
            else:
                kwargs[keyword.arg] = value
        if isinstance(func, _Function):
            call, name = func.func, func.name
            self.check_size(node, name, args)
        elif isinstance(func, _BoundMethod):
            call = _bind(METHODS[type(func.obj)][func.name], func.obj)
            name = f"{type(func.obj).__name__}.{func.name}"
            if name == "str.format":
                self.check_format(node, func.obj)
        else:
            raise StaticEvalError(node, f"calling a {type(func).__name__} is not evaluated")
        check_call_size(node, name, func, args)
        try:
            result = check_result(node, call(*args, **kwargs))
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError) as exc:
            raise StaticEvalError(node, f"{name}() failed: {type(exc).__name__}: {exc}") from None
        if isinstance(func, _BoundMethod) and isinstance(func.obj, (list, dict)):
            self.check_deep(node, func.obj)  # append / extend / update grew it in place
        return result

    def check_format(self, node: ast.AST, template: str) -> None:
        """Refuse ``str.format`` fields that reach into attributes or items (``{0.__class__}``)."""
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        except ValueError as exc:
            raise StaticEvalError(node, f"str.format() failed: ValueError: {exc}") from None
        if any("." in f or "[" in f for f in fields):
            raise StaticEvalError(node, "format fields with '.' or '[' are not evaluated")

    def check_size(self, node: ast.AST, name: str, args: Sequence[Any]) -> None:
        """Refuse builtins whose results could be unreasonably large (``str(10**10000)``)."""
        if name in ("str", "int") and any(isinstance(a, int) and abs(a).bit_length() > 4096 for a in args):
            raise StaticEvalError(node, "the number is too large")

    def eval_BinOp(self, node: ast.BinOp) -> Any:
        return self.binary(node, node.op, self.eval(node.left), self.eval(node.right))

    def binary(self, node: ast.AST, op: ast.operator, left: Any, right: Any) -> Any:
        """``left <op> right`` on data values, refusing results that would be huge."""
        func = _BINARY.get(type(op))
        if func is None:
            raise StaticEvalError(node, f"operator {type(op).__name__} is not evaluated")
        self.check_binary(node, op, left, right)
        if isinstance(op, ast.Mod) and isinstance(left, str):
            check_template(node, left, percent=True)
        try:
            return check_result(node, func(left, right))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
            raise StaticEvalError(node, f"{type(exc).__name__}: {exc}") from None

    def check_binary(self, node: ast.AST, op: ast.operator, left: Any, right: Any) -> None:
        if isinstance(op, ast.Mult):
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > MAX_SIZE:
                    raise StaticEvalError(node, "the result would be too large")
        if isinstance(op, (ast.Pow, ast.LShift)) and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise StaticEvalError(node, "the exponent is too large")
        if isinstance(op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and \
                abs(left).bit_length() * abs(right) > 64 * MAX_EXPONENT:
            raise StaticEvalError(node, "the result would be too large")

    def eval_UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.eval(node.operand)
        try:
            return _UNARY[type(node.op)](operand)
        except TypeError as exc:
            raise StaticEvalError(node, f"TypeError: {exc}") from None

    def eval_BoolOp(self, node: ast.BoolOp) -> Any:
        value: Any = None
        for operand in node.values:
            value = self.eval(operand)
            if isinstance(node.op, ast.And) and not value:
                return value
            if isinstance(node.op, ast.Or) and value:
                return value
        return value

    def eval_Compare(self, node: ast.Compare) -> bool:
        left = self.eval(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.eval(right_node)
            try:
                if not _COMPARE[type(op)](left, right):
                    return False
            except TypeError as exc:
                raise StaticEvalError(node, f"TypeError: {exc}") from None
            left = right
        return True

    def eval_IfExp(self, node: ast.IfExp) -> Any:
        return self.eval(node.body) if self.truth(node.test) else self.eval(node.orelse)


#: Expression nodes that build new values (their results get :meth:`StaticEvaluator.check_deep`).
_BUILDING = (ast.BinOp, ast.Call, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.JoinedStr)


def _segment(text: str, node: ast.AST) -> str:
    """The source of ``node`` (or of its first line when the node is huge)."""
    if not hasattr(node, "lineno"):
        return ""
    if (getattr(node, "end_lineno", None) or node.lineno) - node.lineno > 20:
        return text.splitlines()[node.lineno - 1] if node.lineno <= len(text.splitlines()) else ""
    return ast.get_source_segment(text, node) or ""


def check_result(node: ast.AST, value: Any) -> Any:
    """``value``, or an error when it is a string or collection longer than :data:`MAX_SIZE`."""
    if isinstance(value, (str, list, tuple, dict, set, range)) and len(value) > MAX_SIZE:
        raise StaticEvalError(node, "the result would be too large")
    return value


_DIGITS = re.compile(r"\d+")
_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\d*)(?:\.(\d*))?")


def check_widths(node: ast.AST, spec: str) -> None:
    """Refuse a format spec (``>10``, ``.3f``) with a width or precision over :data:`MAX_SIZE`."""
    if any(len(d) > 7 or int(d) > MAX_SIZE for d in _DIGITS.findall(spec)):
        raise StaticEvalError(node, "a format width is too large")


def check_template(node: ast.AST, template: str, percent: bool) -> None:
    """Apply :func:`check_widths` to every field of a ``%`` or ``str.format`` template."""
    if percent:
        if re.search(r"%(?:\([^)]*\))?[#0\- +]*\*|%[^%]*?\.\*", template):
            raise StaticEvalError(node, "'*' widths are not evaluated")
        specs = ["".join(m.groups(default="")) for m in _PERCENT_FIELD.finditer(template)]
    else:
        try:
            specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(template)]
        except ValueError as exc:
            raise StaticEvalError(node, f"str.format() failed: ValueError: {exc}") from None
    for spec in specs:
        check_widths(node, spec)


def check_call_size(node: ast.AST, name: str, func: Any, args: Sequence[Any]) -> None:
    """Refuse string methods whose result would be far larger than their inputs."""
    if not isinstance(func, _BoundMethod) or not isinstance(func.obj, str):
        return
    if name == "str.join" and args and isinstance(args[0], (list, tuple)):
        total = sum(len(a) for a in args[0] if isinstance(a, str)) + len(func.obj) * len(args[0])
        check_result(node, range(min(total, MAX_SIZE + 1)))
    elif name == "str.replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        grown = func.obj.count(args[0]) * len(args[1]) if args[0] else (len(func.obj) + 1) * len(args[1])
        check_result(node, range(min(len(func.obj) + grown, MAX_SIZE + 1)))
    elif name == "str.format":
        check_template(node, func.obj, percent=False)


def _bind(method: Callable[..., Any], obj: Any) -> Callable[..., Any]:
    return lambda *args, **kwargs: method(obj, *args, **kwargs)


# -- files and _base_ chains ----------------------------------------------------------------
class LoadedConfig:
    """The merged data of a config file and its bases, and every file read (in order)."""

    def __init__(self, data: dict[str, Any], files: list[str]) -> None:
        self.data = data
        self.files = files


def parse_file(path: Path, shown: str) -> tuple[str, list[str], ast.Module]:
    """Read and parse ``path`` with its ``{{_base_.x}}`` placeholders substituted.

    Returns ``(substituted text, placeholder paths, tree)``; a missing file or a syntax error
    is a :class:`ConfigError` naming the file (and line).
    """
    raw = read_config_text(path, shown)
    if path.suffix.lower() in (".yaml", ".yml"):
        raise ConfigError(not_python(raw), file=shown)
    text, paths = substitute_base_refs(raw)
    try:
        with warnings.catch_warnings():  # '\d' in a non-raw string is common in old configs
            warnings.simplefilter("ignore")
            tree = ast.parse(text, filename=shown)
    except SyntaxError as exc:
        if looks_like_yaml(raw):
            raise ConfigError(not_python(raw), file=shown) from None
        line = exc.lineno or 0
        raise ConfigError(f"invalid Python: {exc.msg}", file=f"{shown}:{line}") from None
    except (RecursionError, MemoryError):
        raise ConfigError("cannot evaluate statically: the file nests expressions too deeply to parse "
                          f"(e.g. a very long chain of '+'); write the values out", file=shown) from None
    return text, paths, tree


_YAML_KEY = re.compile(r"^[A-Za-z_][\w.\-]*\s*:(\s|$)")


def looks_like_yaml(text: str) -> bool:
    """Whether the first statement-like line is ``KEY:`` (a YAML mapping), not Python."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped != "---":
            return bool(_YAML_KEY.match(stripped))
    return False


def not_python(text: str) -> str:
    """The message for a YAML file given to the migrator (detectron2's configs named as such)."""
    detectron = re.search(r"^(_BASE_|MODEL|SOLVER|INPUT|DATASETS|TEST)\s*:", text, re.MULTILINE)
    what = ("a detectron2 YAML config (a detection benchmark's settings, run by detectron2)" if detectron
            else "a YAML file")
    return (f"not a Python config: this is {what}; only MMSelfSup 0.x / OpenSelfSup Python configs "
            "(.py) can be migrated")


def evaluate_bases(tree: ast.Module, text: str, shown: str) -> tuple[list[str], int]:
    """The ``_base_`` paths a file names (``[]`` if none) and the line of that assignment.

    Only the ``_base_ = ...`` statements at module level are evaluated (literals, usually).
    """
    found: tuple[Any, int] | None = None
    evaluator = StaticEvaluator(text, shown)
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == BASE_KEY for t in stmt.targets):
            try:
                found = (evaluator.eval(stmt.value), stmt.lineno)
            except (StaticEvalError, _Poisoned, EvaluationLimit) as exc:
                evaluator.report(getattr(exc, "node", stmt), getattr(exc, "why", "depends on an unknown value"))
    if evaluator.problems:
        raise ConfigError(evaluator.problems)
    if found is None:
        return [], 0
    value, line = found
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError("_base_ must be a path or a list of paths", file=f"{shown}:{line}")
    return list(value), line


def load_python_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Evaluate a Python config and its ``_base_`` chain statically; returns the merged data.

    Raises one :class:`ConfigError` listing every problem of the first file that has any; a
    file that reaches a bound on the work (sizes, depth, steps, the ``_base_`` chain) gets one
    problem only.
    """
    files: list[str] = []
    try:
        data = strip_delete(_load(Path(path), (), files, [0]))
    except (RecursionError, MemoryError) as exc:  # a last guard; the bounds should come first
        raise ConfigError(f"cannot evaluate statically: the file needs too much "
                          f"{'memory' if isinstance(exc, MemoryError) else 'nesting'}; write the values out",
                          file=display_path(Path(path))) from None
    return LoadedConfig(data, files)


def _load(path: Path, chain: tuple[Path, ...], files: list[str], budget: list[int]) -> dict[str, Any]:
    shown = display_path(path)
    files.append(shown)
    text, ref_paths, tree = parse_file(path, shown)
    bases, line = evaluate_bases(tree, text, shown)
    if bases and len(chain) + 1 >= MAX_BASE_DEPTH:
        raise ConfigError(f"_base_: the chain of _base_ files is more than {MAX_BASE_DEPTH} files deep",
                          file=f"{shown}:{line}")
    if len(files) + len(bases) > MAX_FILES:
        raise ConfigError(f"_base_: more than {MAX_FILES} _base_ files are read for one config",
                          file=f"{shown}:{line}")
    merged = _load_bases(path, bases, line, chain, files, budget)
    evaluator = StaticEvaluator(text, shown, ref_paths, merged, budget)
    try:
        names = evaluator.run(tree)
    except EvaluationLimit as exc:
        raise ConfigError(evaluator.problem(exc.node, exc.why)) from None
    if evaluator.problems:
        raise ConfigError(evaluator.problems)
    own = {k: v for k, v in names.items() if _is_config_key(k, v)}
    merge_into(merged, own, shown)
    return merged  # the _delete_ markers are stripped once, from the whole result


def _load_bases(path: Path, bases: list[str], line: int, chain: tuple[Path, ...], files: list[str],
                budget: list[int]) -> dict[str, Any]:
    """Read each base of ``path`` (recursively) and merge them; bases may not share keys."""
    shown = display_path(path)
    here = path.resolve()
    merged: dict[str, Any] = {}
    defined_in: dict[str, str] = {}
    for base in bases:
        base_path = (path.parent / base).resolve()
        if base_path == here or base_path in chain:
            cycle = " -> ".join(display_path(p) for p in (*chain, here, base_path))
            raise ConfigError(f"_base_ files include each other in a cycle: {cycle}", file=f"{shown}:{line}")
        if not base_path.is_file():
            raise ConfigError(
                f"_base_: base file {base!r} not found (looked for {base_path}); "
                "_base_ paths are relative to the file that names them",
                file=f"{shown}:{line}",
            )
        if base_path.suffix != ".py":
            raise ConfigError(f"_base_: {base!r} is not a Python config; only .py bases are read", file=f"{shown}:{line}")
        base_data = _load(base_path, (*chain, here), files, budget)
        for key in base_data:
            if key in defined_in:
                raise ConfigError(
                    f"_base_: {key!r} is defined in two bases, {defined_in[key]} and {display_path(base_path)}",
                    file=f"{shown}:{line}",
                )
            defined_in[key] = display_path(base_path)
        merged.update(base_data)
    return merged


def _is_config_key(name: str, value: Any) -> bool:
    """Whether a module-level name is a config key (as mmcv decides: not ``__x``, not a module
    or function, not ``_base_``)."""
    if name.startswith("__") or name == BASE_KEY:
        return False
    return not isinstance(value, (_Module, _Function, _BoundMethod, _Unknown))


def merge_into(base: dict[str, Any], child: dict[str, Any], shown: str, path: tuple[str, ...] = ()) -> None:
    """Merge ``child`` into ``base`` as mmcv does: dicts key by key unless ``_delete_=True``;
    anything else replaces. A dict over a non-dict without ``_delete_`` is an error."""
    for key, value in child.items():
        here = (*path, str(key))
        if isinstance(value, dict) and key in base and not value.get(DELETE_KEY, False):
            if not isinstance(base[key], dict):
                raise ConfigError(
                    f"is a dict here but a {type(base[key]).__name__} in the _base_ files; "
                    f"add {DELETE_KEY}=True to replace it",
                    file=shown,
                    key=".".join(here),
                )
            merge_into(base[key], {k: v for k, v in value.items() if k != DELETE_KEY}, shown, here)
        else:
            base[key] = value


__all__ = ["LoadedConfig", "StaticEvalError", "StaticEvaluator", "load_python_config", "merge_into",
           "restore_base_refs", "substitute_base_refs"]
