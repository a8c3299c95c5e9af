"""A stopped job always checkpoints; one run per work dir (issue 36, items 2 and 3).

SIGTERM/SIGINT to the whole process group (loader workers included) and a plugin hook that
raises; the work dir lock, ``latest.pth`` independent of ``epoch_N.pth``, a work dir that
cannot be written (simulated: the tests may run as root, whom ``chmod`` does not stop, so
they use a path under a regular file, a real file-size limit ``RLIMIT_FSIZE`` in a
subprocess, and an in-process ``os.fsync`` / ``atomic_save`` that fails with ENOSPC), the
clean-up after a failed start and the removal of stale temporary files.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfsup_core.cli import main
from selfsup_core.config import load_config
from selfsup_core.engine import checkpoint as ckpt
from selfsup_core.engine.trainer import PluginHookError, Trainer
from selfsup_core.engine.workdir import LOCK_FILE, WorkDir, WorkDirError
from selfsup_core.errors import ConfigError, SelfSupError

RAISE_HOOK = '[[hooks]]\ntype = "safety_toy:RaiseAt"\nwhere = "{where}"\nat = {at}\n'


def run(path: Path, work_dir: Path, overrides=(), **kwargs):
    return Trainer(load_config(path, list(overrides)), work_dir=work_dir, **kwargs).run()


def state_of(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "selfsup_core.cli", str(config), "--allow-import-paths", *args]


def slow_config(write_config, name: str) -> Path:
    """The toy run with 2 loader workers and a 10 ms delay per sample (a few seconds in all)."""
    config = write_config("", name=name)
    text = config.read_text().replace("length = 64\n", "length = 64\ndelay = 0.01\n", 1)
    config.write_text(text.replace("workers_per_gpu = 0", "workers_per_gpu = 2"))
    return config


def wait_for_records(work: Path, count: int, process: subprocess.Popen) -> None:
    metrics = work / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run wrote no {count} metrics records: {process.communicate()[1][-2000:]}")


# -- item 2: signals to the process group, exceptions in hooks -----------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_saves_then_resumes_bitwise(write_config, tmp_path, toy_env, signum):
    config = slow_config(write_config, "group.toml")
    reference = tmp_path / "reference"
    run(config, reference, deterministic=True)  # uninterrupted, in this process (the same code and seeds)

    work = tmp_path / "work"
    process = subprocess.Popen(cli(config, "--work-dir", str(work), "--deterministic"), env=toy_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_records(work, 2, process)
    os.killpg(process.pid, signum)  # the main process and its two loader workers, as timeout/scancel do
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr
    meta = state_of(work / "latest.pth")["meta"]
    assert 0 < meta["iter"] < 24
    assert not (work / LOCK_FILE).exists()

    resumed = subprocess.run(cli(config, "--work-dir", str(work), "--deterministic", "--resume"), env=toy_env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    a, b = state_of(reference / "latest.pth"), state_of(work / "latest.pth")
    assert a["meta"]["iter"] == b["meta"]["iter"] == 24
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_tensors(a["optimizer"]["state"][0], b["optimizer"]["state"][0])


@pytest.mark.parametrize(("where", "at", "saved_iter"), [
    ("after_iter", 10, 11),   # iteration 11's step was taken: it counts as done
    ("before_iter", 10, 10),  # iteration 11 has not started
    ("after_epoch", 16, 16),  # the second epoch is trained; its end is redone on resume
])
def test_an_exception_in_a_plugin_hook_saves_a_checkpoint_and_ends_in_one_line(write_config, tmp_path, capsys,
                                                                              where, at, saved_iter):
    config = write_config(RAISE_HOOK.format(where=where, at=at), name="raise.toml")
    work = tmp_path / "w"
    code = main([str(config), "--work-dir", str(work), "--set", "log_config.progress=none"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("selfsup 0.")]  # the start-up line
    assert len(lines) == 1, err
    assert lines[0] == (
        f"error: plugin hooks.0.safety_toy:RaiseAt failed in selfsup_{where} at epoch 2, iteration {saved_iter}: "
        f"ValueError: boom; checkpoint saved to {work / 'latest.pth'}; continue with: selfsup-run {config} "
        f"--work-dir {work} --resume")
    meta = state_of(work / "latest.pth")["meta"]
    assert meta["iter"] == saved_iter
    assert (meta["epoch"], meta["inner_iter"]) == ((1, saved_iter - 8) if where != "after_epoch" else (1, 8))
    # the hook is gone: the run continues from there to the end
    plain = write_config("", name="raise.toml")
    result = run(plain, work, resume="auto")
    assert (result["epoch"], result["iter"]) == (3, 24)


def test_a_hook_failing_before_the_first_iteration_leaves_nothing_behind(write_config, tmp_path):
    config = write_config(RAISE_HOOK.format(where="before_run", at=0), name="early.toml")
    work = tmp_path / "existing"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    with pytest.raises(PluginHookError, match=r"plugin hooks.0.safety_toy:RaiseAt failed in selfsup_before_run at "
                                              r"epoch 1, iteration 0: ValueError: boom; no checkpoint was written"):
        run(config, work)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]  # metrics.jsonl, config.toml, lock: gone
    result = run(write_config("", name="early.toml"), work)  # a plain rerun is not blocked
    assert result["iter"] == 24


# -- item 3: the work dir -------------------------------------------------------------------------------
def test_a_second_run_into_a_locked_work_dir_is_refused_naming_the_holder(write_config, tmp_path, toy_env):
    config = write_config("", name="lock.toml")
    work = tmp_path / "w"
    holder = WorkDir(work)
    holder.open()
    try:
        for extra in ([], ["--resume"]):
            result = subprocess.run(cli(config, "--work-dir", str(work), *extra), env=toy_env, capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip() == (
                f"error: work dir {work} is in use by another run (PID {os.getpid()}, lock {work / LOCK_FILE}); "
                "wait for it to end, or pass --work-dir NEW_DIR; nothing was changed")
        assert sorted(p.name for p in work.iterdir()) == [LOCK_FILE]
    finally:
        holder.close()
    assert run(config, work)["iter"] == 24
    assert not (work / LOCK_FILE).exists()
    holder.open()
    try:
        with pytest.raises(WorkDirError, match=f"in use by another run \\(PID {os.getpid()}"):
            run(config, work, resume="auto")
    finally:
        holder.close()
    assert run(config, work, ["runner.max_epochs=4"], resume="auto")["iter"] == 32


def test_two_real_runs_at_once_one_is_refused(write_config, tmp_path, toy_env):
    config = slow_config(write_config, "both.toml")
    work = tmp_path / "w"
    first = subprocess.Popen(cli(config, "--work-dir", str(work), "--set", "runner.max_epochs=100"), env=toy_env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_records(work, 1, first)
        second = subprocess.run(cli(config, "--work-dir", str(work), "--resume"), env=toy_env, capture_output=True,
                                text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=240)
    assert first.returncode == 128 + signal.SIGTERM, stderr
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().startswith(f"error: work dir {work} is in use by another run (PID {first.pid},")
    train = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    iters = [r["iter"] for r in train if r["mode"] == "train"]
    assert iters == sorted(set(iters))  # one run's records only
    assert not (work / LOCK_FILE).exists()


def test_latest_is_an_independent_file(write_config, tmp_path):
    config = write_config()
    work = tmp_path / "w"
    run(config, work)
    latest, newest = work / "latest.pth", work / "epoch_3.pth"
    assert latest.stat().st_nlink == 1 and newest.stat().st_nlink == 1
    assert not os.path.samefile(latest, newest)
    assert_same_tensors(state_of(latest)["state_dict"], state_of(newest)["state_dict"])
    with open(newest, "r+b") as handle:  # damaged in place: latest.pth is not
        handle.write(b"\0" * 4096)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(newest)
    assert run(config, work, ["runner.max_epochs=4"], resume="auto")["iter"] == 32


def test_a_work_dir_that_cannot_be_created_fails_in_one_line(write_config, tmp_path, capsys):
    config = write_config()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = main([str(config), "--work-dir", str(blocker / "w")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"error: work dir {blocker / 'w'} cannot be created (") and "\n" not in err
    assert blocker.read_text() == "x"


def test_an_unwritable_work_dir_fails_before_training(write_config, tmp_path, monkeypatch):
    config = write_config()
    work = tmp_path / "w"

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("selfsup_core.engine.workdir.os.fsync", no_space)
    with pytest.raises(WorkDirError) as info:
        run(config, work)
    assert str(info.value) == (f"work dir {work} is not writable (OSError: No space left on device); fix its "
                               "permissions or free space, or pass --work-dir DIR on a writable disk")
    assert not work.exists()  # created by the failed start, removed again


def test_a_failing_save_keeps_the_previous_checkpoint_in_one_line(write_config, tmp_path, monkeypatch):
    config = write_config()
    work = tmp_path / "w"
    saves = []
    real_save = ckpt.atomic_save

    def save(state, path):
        saves.append(Path(path).name)
        if len(saves) > 2:  # epoch 1 (epoch_1.pth, latest.pth) is written, epoch 2 is not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(state, path)

    monkeypatch.setattr(ckpt, "atomic_save", save)
    with pytest.raises(ckpt.CheckpointError) as info:
        run(config, work)
    assert str(info.value) == (
        f"cannot write checkpoint {work / 'epoch_2.pth'} (OSError: [Errno 28] No space left on device); the last "
        f"complete checkpoint {work / 'latest.pth'} is kept; free space or fix the work dir's permissions, then "
        f"continue with: selfsup-run {config} --work-dir {work} --resume {work / 'latest.pth'}")
    assert state_of(work / "latest.pth")["meta"]["epoch"] == 1
    assert not list(work.glob(".*.tmp"))


def test_a_file_size_limit_at_save_time_is_one_line(write_config, tmp_path, toy_env):
    config = write_config()
    work = tmp_path / "w"

    def limit() -> None:  # a real EFBIG from the kernel; the probe file (3.5 kB) still fits
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

    result = subprocess.run(cli(config, "--work-dir", str(work)), env=toy_env, capture_output=True, text=True,
                            timeout=120, preexec_fn=limit)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith(f"error: cannot write checkpoint {work / 'epoch_1.pth'} ("), result.stderr
    assert lines[-1].endswith("no checkpoint was written; free space or fix the work dir's permissions, then "
                              f"continue with: selfsup-run {config} --work-dir {work} --resume"), result.stderr
    assert "Traceback" not in result.stderr
    assert not list(work.glob("*.pth")) and not list(work.glob(".*.tmp"))


def test_a_failed_start_removes_what_it_created(write_config, tmp_path):
    config = write_config()
    fresh = tmp_path / "fresh" / "w"
    with pytest.raises(ConfigError):
        run(config, fresh, ["model.hidden='wide'"])
    assert not fresh.exists()
    assert (tmp_path / "fresh").exists()  # only the folder the run itself created goes
    assert run(config, fresh)["iter"] == 24


def test_stale_temporary_files_are_removed_on_the_next_start(write_config, tmp_path):
    config = write_config()
    work = tmp_path / "w"
    run(config, work, ["runner.max_epochs=1"])
    stale = [work / ".epoch_2.pth.k3j4h5.tmp", work / ".latest.pth.link", work / ".latest.pth.abc.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    assert run(config, work, ["runner.max_epochs=2"], resume="auto")["iter"] == 16
    assert not any(path.exists() for path in stale)


def test_errors_are_selfsup_errors():
    assert issubclass(WorkDirError, SelfSupError) and issubclass(PluginHookError, SelfSupError)


def test_a_hook_failing_after_the_run_keeps_the_final_checkpoint(write_config, tmp_path):
    config = write_config('[[hooks]]\ntype = "safety_toy:RaiseAfterRun"\n', name="after.toml")
    work = tmp_path / "w"
    with pytest.raises(PluginHookError) as info:
        run(config, work)
    assert str(info.value) == (f"plugin hooks.0.safety_toy:RaiseAfterRun failed in selfsup_after_run after epoch 3, "
                               f"iteration 24: ValueError: late; the last checkpoint {work / 'latest.pth'} is as it was")
    assert state_of(work / "latest.pth")["meta"]["iter"] == 24
