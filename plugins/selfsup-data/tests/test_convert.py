"""selfsup-data-convert: ImageList files from folder trees, ImageFolder export of any source."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from selfsup_data.convert import main
from selfsup_data.sources import ImageFolder, ImageList, MNIST
from selfsup_data.sources.mnist import FASHION_MNIST_CLASSES


def samples(src) -> list[tuple[bytes, int]]:
    return [(src.get_img(i).tobytes(), int(src.get_gt_labels()[i])) for i in range(len(src))]


@pytest.mark.parametrize("labels", [True, False])
def test_imagelist_round_trip(image_tree, tmp_path, labels, capsys):
    out = str(tmp_path / "list.txt")
    args = ["imagelist", image_tree["root"], "-o", out] + (["--labels"] if labels else [])
    assert main(args) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    folder = ImageFolder(image_tree["root"], labelled=labels)
    listed = ImageList(out, root=image_tree["root"])
    assert listed.paths == folder.paths
    assert samples(listed) == samples(folder)
    text = open(out).read()
    assert ("bird/b0.png 0\n" in text) == labels
    assert main(args) == 2  # never overwrites
    assert "exists; choose another name or pass --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0


def test_imagelist_errors(tmp_path, capsys):
    assert main(["imagelist", str(tmp_path / "missing"), "-o", str(tmp_path / "l.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: imagelist: root ") and err.count("\n") == 1
    (tmp_path / "sp").mkdir()
    from PIL import Image

    Image.new("RGB", (2, 2)).save(tmp_path / "sp" / "with space.png")
    assert main(["imagelist", str(tmp_path / "sp"), "-o", str(tmp_path / "l.txt")]) == 2
    assert "white space" in capsys.readouterr().err


def test_export_writes_image_folder(write_idx, tmp_path, capsys):
    data = write_idx(sub="mn", n_test=4)
    out = tmp_path / "exported"
    assert main(["export", "--source", "MNIST", "--split", "test", "--root", data["root"], "-o", str(out)]) == 0
    assert "wrote 4 images in 10 class folders" in capsys.readouterr().out
    src = MNIST(data["root"], split="test")
    folders = sorted(p for p in os.listdir(out) if (out / p).is_dir())
    assert folders == sorted(f"{i} - {w}" for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")))
    assert (out / "classes.txt").read_text().splitlines()[3] == "3 - three"
    labels = src.get_gt_labels()
    for i in range(4):
        path = out / src.CLASSES[labels[i]] / f"{i:05d}.png"
        assert path.is_file(), path
    back = ImageFolder(str(out), classes=str(out / "classes.txt"), color_type="unchanged")
    assert back.get_gt_labels().tolist() == labels.tolist()
    listed = str(tmp_path / "l.txt")
    assert main(["imagelist", str(out), "-o", listed, "--labels", "--classes", str(out / "classes.txt")]) == 0
    assert ImageList(listed, root=str(out)).get_gt_labels().tolist() == labels.tolist()
    assert [b.tobytes() for b, _ in [(back.get_img(i), 0) for i in range(4)]] == [src.get_img(i).tobytes() for i in range(4)]
    assert main(["export", "--source", "MNIST", "--root", data["root"], "-o", str(out)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err


def test_export_unlabelled_table_and_errors(tmp_path, capsys):
    np.savez(tmp_path / "u.npz", images=np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4))
    out = tmp_path / "flat"
    table = f'{{type = "NumpyArrays", file = "{tmp_path / "u.npz"}"}}'
    assert main(["export", table, "-o", str(out), "--limit", "2"]) == 0
    assert sorted(os.listdir(out)) == ["00000.png", "00001.png"]
    assert main(["export", "--source", "MNIST", "--set", "rot='x'", "-o", str(tmp_path / "o")]) == 2
    assert "error: command line: data_source.rot: unknown argument of MNIST" in capsys.readouterr().err
    assert main(["export", "-o", str(tmp_path / "o")]) == 2
    assert "error: no data source given" in capsys.readouterr().err


def test_cli_subprocess_fashion_mnist_classes(write_idx, tmp_path):
    data = write_idx(sub="fm", n_test=3)
    out = tmp_path / "fm-out"
    result = subprocess.run(
        [sys.executable, "-m", "selfsup_data.convert", "export", "--source", "FashionMNIST", "--split", "test",
         "--root", data["root"], "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "classes.txt").read_text().splitlines() == [c.replace("/", "_") for c in FASHION_MNIST_CLASSES]
    assert (out / "T-shirt_top" / "00000.png").is_file()  # label 0 -> "T-shirt/top", made a safe folder name
    result = subprocess.run(
        [sys.executable, "-m", "selfsup_data.convert", "imagelist", str(tmp_path / "nope"), "-o", str(tmp_path / "l")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
