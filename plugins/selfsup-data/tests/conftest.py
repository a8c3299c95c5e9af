"""Small real data files for the selfsup-data tests: image trees, CIFAR pickles, IDX files, npz."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image


def make_pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic random uint8 pixels."""
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture
def image_tree(tmp_path: Path) -> dict:
    """A labelled folder tree ``root/{bird,cat,dog}/...`` of real PNG/JPEG files.

    Returns ``{"root": str, "samples": [(relative path, label, uint8 array or None for JPEG)]}``
    in the sorted order ImageFolder must produce.
    """
    root = tmp_path / "tree"
    spec = [
        ("bird/b0.png", 0, "RGB"),
        ("cat/a.PNG", 1, "RGB"),
        ("cat/nested/deep.png", 1, "L"),
        ("cat/z.jpg", 1, "RGB"),
        ("dog/d1.JPEG", 2, "RGB"),
        ("dog/d2.bmp", 2, "RGB"),
    ]
    samples = []
    for i, (rel, label, mode) in enumerate(spec):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = make_pixels(i, (6, 5, 3) if mode == "RGB" else (6, 5))
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}[path.suffix.lower()]
        Image.fromarray(pixels, mode).save(path, format=fmt)
        samples.append((rel, label, None if fmt == "JPEG" else pixels))
    (root / "cat" / ".hidden.png").write_bytes(b"not even an image")
    (root / "cat" / "notes.txt").write_text("not an image")
    return {"root": str(root), "samples": samples}


@pytest.fixture
def write_cifar(tmp_path: Path) -> Callable[..., dict]:
    """Write a miniature CIFAR-10 or CIFAR-100 in the official python-pickle format.

    ``write_cifar(kind="cifar10"|"cifar100", per_batch=3)`` returns ``{"parent", "folder",
    "train": (images NHWC, labels), "test": (...), "classes"}``.
    """

    def write(kind: str = "cifar10", per_batch: int = 3) -> dict:
        parent = tmp_path / kind
        if kind == "cifar10":
            folder = parent / "cifar-10-batches-py"
            train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
            label_key, meta_file, names_key, n_classes = b"labels", "batches.meta", b"label_names", 10
        else:
            folder = parent / "cifar-100-python"
            train_files, test_files = ["train"], ["test"]
            label_key, meta_file, names_key, n_classes = b"fine_labels", "meta", b"fine_label_names", 100
        folder.mkdir(parents=True)
        out: dict = {"parent": str(parent), "folder": str(folder)}
        seed = 0
        for split, files in (("train", train_files), ("test", test_files)):
            images, labels = [], []
            for name in files:
                seed += 1
                nchw = make_pixels(seed, (per_batch, 3, 32, 32))
                lab = [int(x) for x in np.random.default_rng(seed).integers(0, n_classes, per_batch)]
                batch = {b"batch_label": b"x", label_key: lab, b"data": nchw.reshape(per_batch, -1),
                         b"filenames": [b"f.png"] * per_batch}
                if kind == "cifar100":
                    batch[b"coarse_labels"] = [0] * per_batch
                with open(folder / name, "wb") as fh:
                    pickle.dump(batch, fh, protocol=2)
                images.append(nchw.transpose(0, 2, 3, 1))
                labels += lab
            out[split] = (np.concatenate(images), np.asarray(labels))
        classes = [f"class{i}" for i in range(n_classes)]
        meta = {names_key: [c.encode() for c in classes], b"num_cases_per_batch": per_batch}
        with open(folder / meta_file, "wb") as fh:
            pickle.dump(meta, fh, protocol=2)
        out["classes"] = classes
        return out

    return write


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file's bytes for ``array``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@pytest.fixture
def write_idx(tmp_path: Path) -> Callable[..., dict]:
    """Write train and test IDX files (``gz=True`` gzipped) under ``tmp_path/<sub>``.

    Returns ``{"root", "train": (images, labels), "test": (images, labels)}``.
    """

    def write(sub: str = "idx", gz: bool = True, n_train: int = 5, n_test: int = 3, size: int = 4) -> dict:
        root = tmp_path / sub
        root.mkdir(parents=True, exist_ok=True)
        out: dict = {"root": str(root)}
        for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
            images = make_pixels(n + size, (n, size, size))
            labels = (np.arange(n) * 3 % 10).astype(np.uint8)
            for name, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
                data = idx_bytes(arr)
                if gz:
                    with gzip.open(os.path.join(root, name + ".gz"), "wb") as fh:
                        fh.write(data)
                else:
                    (root / name).write_bytes(data)
            out[split] = (images, labels.astype(np.int64))
        return out

    return write
