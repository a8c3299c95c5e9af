"""errors.Problems: the one collector every validation pass appends to; a bad hook is one line."""
from __future__ import annotations

import pytest

from selfsup_core.config import Config, load_config
from selfsup_core.engine.dry_run import preflight
from selfsup_core.errors import ConfigError, Problem, Problems


def test_problems_name_file_and_key_and_raise_together_once_each():
    config = Config({"optimizer": {"lr": "x"}}, filename="a.toml")
    problems = Problems(config, ("optimizer",))
    assert not problems
    problems.raise_if_any()  # nothing collected: no error
    problems.add(("lr",), "must be a number")
    problems.add((), "missing 'type'")
    problems.add(("lr",), "must be a number")  # the same line again: kept once
    problems += [Problem("other", "b.toml", "x")]
    assert len(problems) == 3
    with pytest.raises(ConfigError) as info:
        problems.raise_if_any()
    assert str(info.value).splitlines() == ["a.toml: optimizer.lr: must be a number", "a.toml: optimizer: missing 'type'",
                                            "b.toml: x: other"]


def test_without_a_config_the_key_alone_is_named():
    problems = Problems(path=("lr_config",))
    problems.add(("step", 0), "must be > 0")
    assert [str(p) for p in problems] == ["lr_config.step.0: must be > 0"]


@pytest.mark.parametrize(("hooks", "lines"), [
    ("[7]", ["hooks: item 0 must be a table with a 'type' naming a hook component, got the number 7"]),
    ("7", ["hooks: must be a table with a 'type' naming a hook component, got the number 7"]),
    ('[{x = 1}, "a"]', ["hooks: item 0 must be a table with a 'type' naming a hook component, got a table without type",
                        "hooks: item 1 must be a table with a 'type' naming a hook component, got the string 'a'"]),
])
def test_a_hook_that_is_not_a_table_is_reported_once(write_config, hooks, lines):
    config = load_config(write_config(), [f"hooks={hooks}"])
    with pytest.raises(ConfigError) as info:
        preflight(config)
    assert [f"{p.key}: {p.message}" for p in info.value.problems] == lines
