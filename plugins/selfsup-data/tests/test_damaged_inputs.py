"""Wrong roots and unreadable images (issue 35): a root given is used or refused in one line,
never replaced by another copy; an unreadable image is one line naming it, also when it
was read in a DataLoader worker process."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup_data.datasets.views import OneViewDataset
from selfsup_data.sources import base
from selfsup_data.sources.arrays import NumpyArrays
from selfsup_data.sources.base import BadSampleError
from selfsup_data.sources.cifar import CIFAR10, CIFAR100
from selfsup_data.sources.folder import ImageFolder, ImageList
from selfsup_data.sources.mnist import MNIST, FashionMNIST
from selfsup_core.errors import SelfSupError

IDX_FIX = ("put the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz ...) in root, or leave root out to read "
           "the copy 'apt-get install -y dataset-fashion-mnist' installs")


@pytest.fixture
def other_copy(write_idx, monkeypatch):
    """A complete Fashion-MNIST copy where the source looks when no root is given: a wrong
    explicit root must never fall back to it."""
    data = write_idx(sub="system-copy")
    monkeypatch.setattr(FashionMNIST, "system_dirs", (data["root"],))
    monkeypatch.setattr(base, "_ANNOUNCED", set())  # each test sees its own announcement
    return data


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


# -- explicit roots -------------------------------------------------------------------------------------------
def test_fashion_mnist_wrong_roots_are_refused_not_substituted(other_copy, write_idx, tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(missing)
    assert one_line(info.value) == f"FashionMNIST: root {missing!r} does not exist; {IDX_FIX}"

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        FashionMNIST(str(a_file))
    assert one_line(info.value) == f"FashionMNIST: root {str(a_file)!r} is a file, not a folder; {IDX_FIX}"

    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(str(link))
    assert one_line(info.value).startswith(f"FashionMNIST: root {str(link)!r} is a symlink to ")

    no_labels = write_idx(sub="no-labels")
    os.remove(os.path.join(no_labels["root"], "train-labels-idx1-ubyte.gz"))
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(no_labels["root"])
    images = os.path.join(no_labels["root"], "train-images-idx3-ubyte.gz")
    assert one_line(info.value) == (f"FashionMNIST: root {no_labels['root']!r} has {images} but no "
                                    f"train-labels-idx1-ubyte[.gz] next to it; {IDX_FIX}")

    no_images = write_idx(sub="no-images")
    os.remove(os.path.join(no_images["root"], "t10k-images-idx3-ubyte.gz"))
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(no_images["root"], split="test")
    labels = os.path.join(no_images["root"], "t10k-labels-idx1-ubyte.gz")
    assert one_line(info.value) == (f"FashionMNIST: root {no_images['root']!r} has {labels} but no "
                                    f"t10k-images-idx3-ubyte[.gz] next to it; {IDX_FIX}")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(str(empty))
    assert one_line(info.value).startswith(f"FashionMNIST: root {str(empty)!r} has no train-images-idx3-ubyte[.gz] "
                                           "with train-labels-idx1-ubyte[.gz] (looked in it and its raw/")


def test_fashion_mnist_without_root_says_which_copy_it_read(other_copy, capsys):
    source = FashionMNIST(split="test")
    assert source.image_file == os.path.join(other_copy["root"], "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(source.get_gt_labels(), other_copy["test"][1])
    stderr = capsys.readouterr().err.strip().splitlines()
    assert stderr == [f"FashionMNIST: no root given; reading {source.image_file} and {source.label_file}"]


def test_fashion_mnist_without_root_reads_data_fashion_mnist_of_the_working_directory_first(write_idx, tmp_path,
                                                                                             monkeypatch, capsys):
    local = write_idx(sub="data/fashion-mnist")
    monkeypatch.setattr(base, "_ANNOUNCED", set())
    monkeypatch.chdir(tmp_path)
    assert FashionMNIST.system_dirs == ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist")
    source = FashionMNIST()
    assert source.image_file == "data/fashion-mnist/train-images-idx3-ubyte.gz" and len(source) == 5
    np.testing.assert_array_equal(source.get_gt_labels(), local["train"][1])
    folder = tmp_path / "data" / "fashion-mnist"
    assert capsys.readouterr().err == (f"FashionMNIST: no root given; reading {folder}/train-images-idx3-ubyte.gz "
                                       f"and {folder}/train-labels-idx1-ubyte.gz\n")


def test_mnist_without_root_and_without_a_system_copy_is_one_line():
    with pytest.raises(FileNotFoundError) as info:
        MNIST()
    assert one_line(info.value) == ("MNIST: root is not given and there is no train-images-idx3-ubyte[.gz] with "
                                    "train-labels-idx1-ubyte[.gz]; put the MNIST IDX files (train-images-idx3-ubyte.gz "
                                    "...) in root")


@pytest.mark.parametrize("kind,cls", [("cifar10", CIFAR10), ("cifar100", CIFAR100)])
def test_cifar_wrong_roots(write_cifar, tmp_path, kind, cls):
    data = write_cifar(kind)
    name = cls.__name__
    fix = f"give the extracted '{cls.base_folder}' folder or its parent"
    a_file = os.path.join(data["folder"], cls.test_files[0])
    with pytest.raises(NotADirectoryError) as info:
        cls(a_file)
    assert one_line(info.value) == f"{name}: root {a_file!r} is a file, not a folder; {fix}"
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError) as info:
        cls(missing)
    assert one_line(info.value) == f"{name}: root {missing!r} does not exist; {fix}"
    os.remove(a_file)
    with pytest.raises(FileNotFoundError) as info:
        cls(data["folder"], split="test")
    assert one_line(info.value) == (
        f"{name}: root {data['folder']!r} has no {cls.test_files[0]} (looked in {data['folder']}); extract the official "
        f"python version of {name} ({cls.base_folder}) into root")


def test_image_folder_image_list_and_numpy_arrays_wrong_paths(image_tree, tmp_path):
    a_file = os.path.join(image_tree["root"], "bird", "b0.png")
    with pytest.raises(NotADirectoryError) as info:
        ImageFolder(a_file)
    assert one_line(info.value) == (f"ImageFolder: root {a_file!r} is a file, not a folder; give a folder of images "
                                    "(class sub-folders or a flat folder)")
    empty = tmp_path / "no-images"
    (empty / "cls").mkdir(parents=True)
    (empty / "cls" / "notes.txt").write_text("no image here")
    with pytest.raises(ValueError, match=r"^ImageFolder: no image files \(.*\) under root "):
        ImageFolder(str(empty))

    with pytest.raises(IsADirectoryError) as info:
        ImageList(image_tree["root"])
    assert one_line(info.value).startswith(f"ImageList: ann_file {image_tree['root']!r} is a folder, not a file; ")
    ann = tmp_path / "list.txt"
    ann.write_text("bird/b0.png 0\n")
    with pytest.raises(NotADirectoryError) as info:
        ImageList(str(ann), root=a_file)
    assert one_line(info.value) == (f"ImageList: root {a_file!r} is a file, not a folder; give the folder the "
                                    "listed paths are relative to")
    assert ImageList(str(ann), root=image_tree["root"]).get_img(0).size == (5, 6)

    with pytest.raises(IsADirectoryError) as info:
        NumpyArrays(str(tmp_path))
    assert one_line(info.value) == (f"NumpyArrays: file {str(tmp_path)!r} is a folder, not a file; give an .npz file "
                                    "written with numpy.savez")


# -- unreadable images ------------------------------------------------------------------------------------------
def _damage(path: Path, kind: str) -> None:
    good = path.read_bytes()
    path.unlink()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("this is a text file, not a PNG\n")
    else:  # a dangling symlink
        path.symlink_to(path.with_name("gone.png"))


@pytest.fixture
def picture_folder(tmp_path):
    root = tmp_path / "pictures"
    root.mkdir()
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / f"{i}.png")
    return root


def _dataset(root: Path) -> OneViewDataset:
    from torchvision.transforms import v2

    return OneViewDataset(ImageFolder(str(root)), pipeline=[v2.ToImage()])


@pytest.mark.parametrize("kind", ["truncated", "zero-bytes", "random-bytes", "text", "dangling-symlink"])
def test_an_unreadable_image_is_one_line_naming_it(picture_folder, kind):
    bad = picture_folder / "3.png"
    _damage(bad, kind)
    dataset = _dataset(picture_folder)
    with pytest.raises(BadSampleError) as info:
        dataset[3]
    message = one_line(info.value)
    assert isinstance(info.value, SelfSupError) and info.value.path == str(bad)
    assert message.startswith(f"cannot read image {bad}: ")
    assert message.endswith('(set on_bad_sample = "skip" on the dataset to skip unreadable files)')


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_read_in_a_worker_is_the_same_one_line(picture_folder, workers):
    bad = picture_folder / "2.png"
    _damage(bad, "zero-bytes")
    dataset = _dataset(picture_folder)
    with pytest.raises(BadSampleError) as direct:
        dataset[2]
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers)
    with pytest.raises(BadSampleError) as info:
        list(loader)
    assert str(info.value) == str(direct.value)
    assert (info.value.path, info.value.reason) == (direct.value.path, direct.value.reason)
