"""``selfsup-run show NAME`` / ``list --args NAME``: arguments with types, defaults and docs."""
from __future__ import annotations

from typing import Optional

import pytest
from selfsup_core import session
from selfsup_core.cli import main
from selfsup_core.describe import argument_docs, describe


class Widget:
    """A widget for tests.

    Second paragraph, not shown.

    Args:
        size: edge length in pixels,
            continued here.
        colour, shade: what it looks like.
        extra: no default.
    """

    def __init__(self, extra: int, size: int = 3, colour: str = "red", shade: Optional[float] = None) -> None:
        pass


def test_describe_reads_signature_and_docstring() -> None:
    with session.get("necks").temporary("Widget", Widget):
        (record,) = describe("Widget")
    assert record["kind"] == "necks" and record["summary"] == ["A widget for tests."]
    args = {a["name"]: a for a in record["arguments"]}
    assert list(args) == ["extra", "size", "colour", "shade"]
    assert args["extra"] == {"name": "extra", "type": "int", "required": True, "default": None, "doc": "no default."}
    assert args["size"]["default"] == "3" and args["size"]["doc"] == "edge length in pixels, continued here."
    assert args["colour"]["default"] == "'red'" and args["shade"]["doc"] == "what it looks like."
    assert args["shade"]["type"] in ("float | None", "Optional[float]")


def test_argument_docs_stops_at_the_section_end() -> None:
    assert argument_docs("Title.\n\nArgs:\n    a: one.\n\nReturns:\n    b: not an argument.") == {"a": "one."}


def test_cli_show_and_list_args(capsys: pytest.CaptureFixture[str]) -> None:
    with session.get("necks").temporary("Widget", Widget):
        assert main(["show", "Widget"]) == 0
        shown = capsys.readouterr().out
        assert main(["list", "necks", "--args", "Widget"]) == 0
        assert capsys.readouterr().out == shown
    assert "  size: int = 3\n      edge length in pixels, continued here." in shown
    assert main(["show", "Wigdet", "--kind", "necks"]) == 2
    assert "error: no necks component named 'Wigdet'" in capsys.readouterr().err


def test_an_lr_policy_shows_the_lr_config_keys_it_reads():
    (record,) = describe("Step", "lr_policies")
    assert record["provider"].startswith("selfsup-core")
    assert [a["name"] for a in record["arguments"]] == ["step", "gamma", "min_lr"]
    assert all(a["doc"] == f"[lr_config] {a['name']}" and not a["required"] for a in record["arguments"])
