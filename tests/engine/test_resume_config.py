"""``--resume`` continues with the run's own saved config (issue 34, item 1): the printed
``continue with`` command reproduces the run, overrides and flags included; changes on resume
are refused in one line unless ``--resume-with-changes``."""
from __future__ import annotations

import shlex

import torch

from selfsup_core.cli import main

HOOK = '[[hooks]]\ntype = "resume_toy:InterruptAt"\n'
# the run's own overrides: the continue line does not repeat them
OVERRIDES = ["--set", "data.train.length=48", "runner.max_epochs=2", "log_config.progress=none"]


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_the_printed_continue_command_resumes_the_identical_run(write_config, tmp_path, capsys, monkeypatch):
    config = write_config(HOOK, name="resume.toml")
    reference = tmp_path / "reference"
    assert main([str(config), "--work-dir", str(reference), "--seed", "7", "--deterministic", *OVERRIDES]) == 0
    capsys.readouterr()

    work = tmp_path / "work"
    monkeypatch.setenv("SELFSUP_TEST_INTERRUPT_AT", "5")
    code = main([str(config), "--work-dir", str(work), "--seed", "7", "--deterministic", *OVERRIDES])
    err = capsys.readouterr().err
    assert code != 0, err
    command = err.rsplit("continue with: ", 1)[1].strip()
    assert command == f"selfsup-run {config} --work-dir {work} --resume"
    assert torch.load(work / "latest.pth", weights_only=True)["meta"]["iter"] == 5
    monkeypatch.delenv("SELFSUP_TEST_INTERRUPT_AT")

    assert main(shlex.split(command)[1:]) == 0
    assert "UserWarning" not in capsys.readouterr().err
    a, b = weights(reference / "latest.pth"), weights(work / "latest.pth")
    assert torch.load(work / "latest.pth", weights_only=True)["meta"]["iter"] == 12  # 48 / 8 x 2 epochs
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (work / "config.toml").read_text() == (reference / "config.toml").read_text()


def test_changes_on_resume_are_refused_in_one_line_unless_asked_for(write_config, tmp_path, capsys):
    config = write_config(HOOK, name="change.toml")
    work = tmp_path / "w"
    assert main([str(config), "--work-dir", str(work), "--seed", "5", *OVERRIDES]) == 0
    capsys.readouterr()
    saved = (work / "config.toml").read_text()
    assert saved.splitlines()[:2] == [f"# resolved from {config}", '# overrides: ["data.train.length=48", '
                                      '"runner.max_epochs=2", "log_config.progress=none", "seed=5"]']
    assert main([str(work / "config.toml"), "--resume"]) == 0  # the saved file itself, its work dir: nothing changes
    assert (work / "config.toml").read_text() == saved
    capsys.readouterr()

    assert main([str(config), "--work-dir", str(work), "--resume", "--set", "runner.max_epochs=3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {work / 'config.toml'}: --resume would change the run's saved config in "
                               "1 key(s) (runner.max_epochs: 2 -> 3); continue the run as it was with: ")
    assert (work / "config.toml").read_text() == saved

    other = write_config(HOOK, name="other.toml")  # the same text as change.toml, without the run's overrides
    assert main([str(other), "--work-dir", str(work), "--resume"]) == 2
    err = capsys.readouterr().err  # another file: compared as it is, the diff reads saved -> requested
    assert "seed: 5 -> 3" in err and "data.train.length: 48 -> 64" in err and "runner.max_epochs: 2 -> 3" in err, err
    assert main([str(config), "--work-dir", str(work), "--resume", "--resume-with-changes",
                 "--set", "runner.max_epochs=3"]) == 0
    err = capsys.readouterr().err
    assert "  runner.max_epochs: 2 -> 3" in err
    assert (work / "config.prev.toml").read_text() == saved
    assert "max_epochs = 3" in (work / "config.toml").read_text()
    assert torch.load(work / "latest.pth", weights_only=True)["meta"]["iter"] == 18

