"""Damaged checkpoints (issue 35): every checkpoint carries a SHA-256 of its contents;
resume, eval and export refuse a damaged one in one line with exit status 2 and change
nothing; export falls back to an older checkpoint only with --fallback, and says which."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from selfsup_core import cli
from selfsup_core.config import load_config
from selfsup_core.engine import checkpoint as ckpt
from selfsup_core.engine.checksum import ChecksumMismatch, add_checksum, state_digest, verify_checksum
from selfsup_core.engine.trainer import Trainer
from selfsup_core.engine.weights_io import WeightsError, read_state_dict

EVALUATION = """
[evaluation]
samples_per_gpu = 16
workers_per_gpu = 0

[evaluation.train]
type = "selfsup_toy:ToyDataset"
length = 24
dim = 64

[evaluation.test]
type = "selfsup_toy:ToyDataset"
length = 12
dim = 64
seed = 1

[[evaluation.evaluators]]
type = "selfsup_toy:ToyEvaluator"
"""


@pytest.fixture
def trained(write_config, tmp_path):
    """A finished 2-epoch run (epoch_1.pth, epoch_2.pth, latest.pth) and its config. The toy
    is bigger than in the other trainer tests: its weights are 64x256 floats (64 KiB), so 4 KiB
    scrambled in the middle of a tensor's bytes leave the archive readable by torch.load."""
    config = write_config(EVALUATION)
    config.write_text(config.read_text().replace("dim = 8\n", "dim = 64\nhidden = 256\n", 1)
                      .replace("length = 64\n", "length = 64\ndim = 64\n", 1), encoding="utf-8")
    work = tmp_path / "trained"
    Trainer(load_config(config, ["runner.max_epochs=2"]), work_dir=work).run()
    return config, work


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run (latest.pth a separate file, as after a copy)."""
    config, work = trained
    copy = tmp_path / "run"
    shutil.copytree(work, copy)
    return config, copy


def scramble_middle(path: Path, size: int = 4096) -> None:
    """Overwrite ``size`` bytes in the middle of the largest tensor record of a torch zip file
    with random bytes (a new file: a hard link to it is left intact)."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[record.header_offset + 26: record.header_offset + 30])
    start = record.header_offset + 30 + name_len + extra_len + record.file_size // 2 - size // 2
    assert record.file_size >= 4 * size
    data[start:start + size] = torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(0),
                                             dtype=torch.uint8).numpy().tobytes()
    path.unlink()
    path.write_bytes(bytes(data))


def damage(path: Path, kind: str) -> None:
    if kind == "scrambled":
        scramble_middle(path)
        return
    data = path.read_bytes()
    path.unlink()
    path.write_bytes({"truncated": data[: len(data) // 2], "zero-bytes": b"",
                      "random-bytes": os.urandom(len(data))}[kind])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def main(args: list[str], capsys) -> tuple[int, list[str], str]:
    """``selfsup-run ARGS`` in this process: (exit status, stderr lines, stdout)."""
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, err.strip().splitlines(), out


# -- the checksum ---------------------------------------------------------------------------------------------
def test_the_checksum_covers_every_entry_and_old_checkpoints_still_load(tmp_path):
    state = {"meta": {"epoch": 1, "time": 1.5}, "state_dict": {"w": torch.arange(6.0).reshape(2, 3)},
             "rng": [torch.tensor([1, 2], dtype=torch.int64)], "hooks": {"queue": (torch.zeros(2, dtype=torch.bfloat16), None), "names": {"x", "y", "z"}}}
    signed = add_checksum(state)
    assert signed["checksum"] == "sha256:" + state_digest(state) and verify_checksum(signed) is True
    for change in (lambda s: s["state_dict"]["w"].view(-1)[4].add_(1e-6),
                   lambda s: s["meta"].__setitem__("epoch", 2),
                   lambda s: s["state_dict"].__setitem__("w2", s["state_dict"].pop("w")),
                   lambda s: s["hooks"].__setitem__("queue", [*s["hooks"]["queue"]])):
        copy = torch.load(_saved(signed, tmp_path / "c.pth"), weights_only=True)
        assert verify_checksum(copy) is True
        change(copy)
        with pytest.raises(ChecksumMismatch, match="do not match the SHA-256 checksum stored in it"):
            verify_checksum(copy)
    assert state_digest({**state, "hooks": {**state["hooks"], "names": {"z", "y", "x"}}}) == state_digest(state)
    old = _saved(state, tmp_path / "old.pth")  # no checksum entry: loads as before
    assert verify_checksum(torch.load(old, weights_only=True)) is False
    assert torch.equal(ckpt.load(old)["state_dict"]["w"], state["state_dict"]["w"])


def _saved(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_training_checkpoints_are_saved_with_it_and_exported_weights_without(trained, tmp_path):
    _, work = trained
    raw = torch.load(work / "epoch_1.pth", weights_only=True)
    assert raw["checksum"].startswith("sha256:") and verify_checksum(raw) is True
    loaded = ckpt.load(work / "epoch_1.pth")
    assert "checksum" not in loaded and loaded["meta"]["epoch"] == 1
    ckpt.atomic_save({"w": torch.ones(2)}, tmp_path / "weights.pth")
    assert list(torch.load(tmp_path / "weights.pth", weights_only=True)) == ["w"]


def test_a_scrambled_checkpoint_loads_in_torch_but_is_refused_everywhere(run_copy, capsys):
    config, work = run_copy
    latest = work / "latest.pth"
    scramble_middle(latest)
    torch.load(latest, weights_only=True)  # the damage torch.load does not see
    with pytest.raises(ckpt.CheckpointError, match=f"^checkpoint {latest} is damaged: its contents do not match"):
        ckpt.load(latest)
    with pytest.raises(WeightsError, match=f"^{latest}: is damaged: its contents do not match"):
        read_state_dict(latest)  # export and init_cfg Pretrained read through this
    before = snapshot(work)

    status, err, _ = main([config, "--work-dir", work, "--resume"], capsys)
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: checkpoint {latest} is damaged: its contents do not match the SHA-256 checksum")

    status, err, _ = main(["eval", config, "--checkpoint", latest, "--evaluator", "toy"], capsys)
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: checkpoint {latest} is damaged: ")
    assert snapshot(work) == before and not (work / "eval").exists()


@pytest.mark.parametrize("kind", ["truncated", "zero-bytes", "random-bytes", "scrambled"])
def test_export_refuses_a_damaged_latest_and_falls_back_only_when_asked(run_copy, tmp_path, capsys, kind):
    _, work = run_copy
    latest, out = work / "latest.pth", tmp_path / "backbone.pth"
    damage(latest, kind)
    before = snapshot(work)
    status, err, out_text = main(["export", work, out], capsys)
    assert status == 2 and len(err) == 1 and not out.exists(), err
    assert err[0].startswith(f"error: {latest}: ")
    assert err[0].endswith(f"; or pass --fallback to export the newest intact epoch_N.pth of {work} instead")

    status, err, out_text = main(["export", work, out, "--fallback"], capsys)
    assert status == 0, err
    lines = out_text.splitlines()
    assert lines[0].startswith(f"--fallback: skipped {latest}: ")
    assert lines[1] == f"--fallback: exporting from {work / 'epoch_2.pth'} instead"
    assert lines[2].endswith(f"of {work / 'epoch_2.pth'} (epoch 2, iteration 16)")
    exported = torch.load(out, weights_only=True)
    expected = torch.load(work / "epoch_2.pth", weights_only=True)["state_dict"]
    assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in expected)
    assert snapshot(work) == before


def test_fallback_skips_the_epoch_file_that_latest_is_a_hard_link_to(trained, tmp_path, capsys):
    _, trained_work = trained
    work = tmp_path / "run"
    work.mkdir()
    for name in ("epoch_1.pth", "epoch_2.pth"):
        shutil.copy2(trained_work / name, work / name)
    os.link(work / "epoch_2.pth", work / "latest.pth")
    data = bytearray((work / "latest.pth").read_bytes())
    with open(work / "latest.pth", "r+b") as handle:  # damaged in place: epoch_2.pth with it
        handle.truncate(len(data) // 3)
    status, err, out_text = main(["export", work, tmp_path / "b.pth", "--fallback", "--json"], capsys)
    assert status == 0, err
    import json

    report = json.loads(out_text)
    assert report["checkpoint"] == str(work / "epoch_1.pth") and report["epoch"] == 1
    skipped = report["fallback_from"]["skipped"]
    assert [s["checkpoint"] for s in skipped] == [str(work / "latest.pth"), str(work / "epoch_2.pth")]
    assert skipped[1]["reason"] == "the same file as latest.pth"


def test_a_damaged_checkpoint_is_one_line_from_a_real_selfsup_run_process(run_copy, tmp_path, toy_env):
    config, work = run_copy
    scramble_middle(work / "latest.pth")
    before = snapshot(work)
    result = subprocess.run([str(Path(sys.executable).with_name("selfsup-run")), "export", str(work),
                             str(tmp_path / "b.pth")], capture_output=True, text=True, env=toy_env, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {work / 'latest.pth'}: is damaged: "), result.stderr
    assert snapshot(work) == before and not (tmp_path / "b.pth").exists()


def test_init_cfg_pretrained_refuses_a_scrambled_selfsup_checkpoint(run_copy):
    apply_init_cfg = pytest.importorskip("selfsup_models.init").apply_init_cfg
    _, work = run_copy
    layer = torch.nn.Linear(64, 256)
    report = apply_init_cfg(layer, {"type": "Pretrained", "checkpoint": str(work / "epoch_2.pth"), "prefix": "net.0."})
    assert torch.equal(layer.weight, ckpt.load(work / "epoch_2.pth")["state_dict"]["net.0.weight"]), report
    scramble_middle(work / "epoch_2.pth")
    with pytest.raises(ValueError) as info:
        apply_init_cfg(layer, {"type": "Pretrained", "checkpoint": str(work / "epoch_2.pth"), "prefix": "net.0."})
    assert str(info.value).startswith(f"init_cfg Pretrained: {work / 'epoch_2.pth'}: is damaged: its contents do not "
                                      "match the SHA-256 checksum stored in it")
