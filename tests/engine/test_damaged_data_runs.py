"""Damaged data in a real run (issue 35): a wrong data-source root in the config and an
unreadable image met in training (0 or 2 DataLoader workers, also after a resume) end
``selfsup-run`` with one line and exit status 2, and leave the last checkpoint as it was."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup_core import cli
from selfsup_core.config import load_config
from selfsup_core.engine.trainer import Trainer
from selfsup_core.errors import SelfSupError, unwrap_worker_message

SCRIPT = Path(sys.executable).with_name("selfsup-run")

# The toy algorithm maps the last dimension (8) of 1x8x8 grey images through its layers.
TOY_DATA = '[data.train]\ntype = "selfsup_toy:ToyDataset"\nlength = 64\n'
IMAGES = """[data.train]
type = "OneViewDataset"
data_source = {{ type = "ImageFolder", root = "{root}", color_type = "grayscale" }}
pipeline = [{{ type = "ToImage" }}, {{ type = "ToDtype", dtype = "float32", scale = true }}]
"""


def image_config(write_config, root: Path) -> Path:
    """The trainer tests' toy config, training on the images under ``root``."""
    config = write_config()
    text = config.read_text()
    assert TOY_DATA in text
    config.write_text(text.replace(TOY_DATA, IMAGES.format(root=root)), encoding="utf-8")
    return config


@pytest.fixture
def picture_folder(tmp_path):
    root = tmp_path / "pictures"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            pixels = np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(root / label / f"{i}.png")
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".pth"}


def test_a_wrong_root_in_the_config_is_one_line_naming_the_key(write_config, tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    config = image_config(write_config, missing)
    status = cli.main([str(config), "--work-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {config}: data.train.data_source: ")
    assert err[0].endswith(f"ImageFolder: root {str(missing)!r} does not exist; give a folder of images "
                           "(class sub-folders or a flat folder)")


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_in_a_resumed_run_is_one_line_and_keeps_the_checkpoint(
        write_config, tmp_path, toy_env, picture_folder, workers):
    config = image_config(write_config, picture_folder)
    work = tmp_path / "run"
    Trainer(load_config(config, ["runner.max_epochs=1", f"data.workers_per_gpu={workers}"]), work_dir=work).run()
    bad = picture_folder / "b" / "5.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated between the epochs
    before = snapshot(work)
    assert set(before) == {"epoch_1.pth", "latest.pth"}
    resumed = subprocess.run([str(SCRIPT), str(config), "--work-dir", str(work), "--resume", "--resume-with-changes",
                               "--allow-import-paths", "--set", "runner.max_epochs=3", f"data.workers_per_gpu={workers}"],
                             capture_output=True, text=True, env=toy_env, timeout=300)
    assert resumed.returncode == 2
    assert "Traceback" not in resumed.stderr
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error:")]
    assert errors == [resumed.stderr.strip().splitlines()[-1]], resumed.stderr
    assert errors[0].startswith(f"error: cannot read image {bad}: ")
    assert errors[0].endswith('(set on_bad_sample = "skip" on the dataset to skip unreadable files)')
    assert snapshot(work) == before


class _FailingDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise SelfSupError("data.train: sample 0 cannot be built\nsecond line of the same error")


def test_a_selfsup_error_raised_in_a_worker_is_unwrapped_to_its_own_lines():
    loader = torch.utils.data.DataLoader(_FailingDataset(), batch_size=2, num_workers=1)
    with pytest.raises(SelfSupError) as info:
        list(loader)
    text = str(info.value)
    assert text.startswith("Caught SelfSupError in DataLoader worker process 0.\nOriginal Traceback")
    assert unwrap_worker_message(text) == "data.train: sample 0 cannot be built\nsecond line of the same error"
    assert unwrap_worker_message("a plain message") is None


FAILING_LOADER_SCRIPT = """
import sys
import torch
from selfsup_core.engine.data import build_loader, loader_batches

class Failing(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        raise OSError("unreadable")

loader, _ = build_loader(Failing(), batch_size=2, num_workers=2, seed=0, rank=0, world_size=1, shuffle=False,
                         drop_last=False, pin_memory=False, persistent_workers=True, prefetch_factor=None)
held = []
try:
    for batch in loader_batches(loader):
        pass
except Exception as exc:
    held.append(exc)  # a live traceback keeps the iterator referenced until exit
    print("caught", type(exc).__name__)
"""


def test_a_loader_error_outside_the_training_loop_does_not_leave_workers_that_block_exit(tmp_path):
    """Workers ignore SIGTERM (they must outlive a stop signal sent to the process group), so
    multiprocessing's exit handler would wait for them forever; ``loader_batches`` stops them."""
    script = tmp_path / "failing_loader.py"
    script.write_text(FAILING_LOADER_SCRIPT, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "caught OSError"
