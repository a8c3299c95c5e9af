"""Data sources built from small real files the tests write (and the system Fashion-MNIST)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from selfsup_core.build import build
from selfsup_core.errors import ConfigError
from selfsup_data.sources import (
    CIFAR10, CIFAR100, MNIST, BadSampleError, FashionMNIST, ImageFolder, ImageList, NumpyArrays,
)
from selfsup_data.sources.mnist import FASHION_MNIST_CLASSES, SYSTEM_FASHION_MNIST, read_idx


def as_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


# -- ImageFolder ---------------------------------------------------------------------------------------
def test_image_folder_labelled_order_labels_pixels(image_tree):
    src = ImageFolder(image_tree["root"])
    rels = [s[0] for s in image_tree["samples"]]
    assert src.paths == rels  # sorted, recursive, any-case extensions, hidden/non-image skipped
    assert len(src) == 6
    assert src.CLASSES == ("bird", "cat", "dog") == src.class_names
    assert src.get_gt_labels().dtype == np.int64
    assert src.get_gt_labels().tolist() == [s[1] for s in image_tree["samples"]]
    for i, (rel, _, pixels) in enumerate(image_tree["samples"]):
        img = src.get_img(i)
        assert img.mode == "RGB" and img.size == (5, 6)
        if pixels is not None:
            expected = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
            np.testing.assert_array_equal(as_array(img), expected, err_msg=rel)


def test_image_folder_color_types(image_tree):
    grey_index = 2  # cat/nested/deep.png, stored as L
    pixels = image_tree["samples"][grey_index][2]
    unchanged = ImageFolder(image_tree["root"], color_type="unchanged")
    assert unchanged.get_img(grey_index).mode == "L"
    np.testing.assert_array_equal(as_array(unchanged.get_img(grey_index)), pixels)
    assert unchanged.get_img(0).mode == "RGB"
    grey = ImageFolder(image_tree["root"], color_type="grayscale")
    assert grey.get_img(0).mode == "L"
    with pytest.raises(ValueError, match="ImageFolder: color_type must be one of"):
        ImageFolder(image_tree["root"], color_type="rgb")


def test_image_folder_flat_is_unlabelled(tmp_path):
    root = tmp_path / "flat"
    (root / "sub").mkdir(parents=True)
    for i, rel in enumerate(["b.png", "a.png", "sub/c.png"]):
        Image.fromarray(np.full((3, 3, 3), i, np.uint8)).save(root / rel)
    src = ImageFolder(str(root))
    assert src.paths == ["a.png", "b.png", "sub/c.png"]
    assert src.get_gt_labels().tolist() == [-1, -1, -1]
    assert src.CLASSES is None
    assert as_array(src.get_img(0))[0, 0, 0] == 1
    with pytest.raises(ValueError, match="image files of its own"):
        ImageFolder(str(root), labelled=True)


def test_image_folder_forced_unlabelled_and_given_classes(image_tree, tmp_path):
    flat = ImageFolder(image_tree["root"], labelled=False)
    assert len(flat) == 6 and set(flat.get_gt_labels().tolist()) == {-1}
    order = tmp_path / "classes.txt"
    order.write_text("dog\ncat\nbird\nfish\n")
    src = ImageFolder(image_tree["root"], classes=str(order))
    assert src.CLASSES == ("dog", "cat", "bird", "fish")
    assert src.get_gt_labels().tolist() == [2, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="is not one of the given classes"):
        ImageFolder(image_tree["root"], classes=["cat", "dog"])


def test_image_folder_missing_and_empty(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError) as info:
        ImageFolder(missing)
    assert str(info.value).startswith(f"ImageFolder: root {missing!r} does not exist; ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(str(tmp_path / "empty"))


def test_corrupt_image_error_names_file(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "good.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    src = ImageFolder(str(root))
    with pytest.raises(BadSampleError) as info:
        src.get_img(0)  # broken.png sorts first
    assert str(root / "broken.png") in str(info.value)
    assert info.value.path == str(root / "broken.png")


# -- ImageList ------------------------------------------------------------------------------------------
def test_image_list_labels_comments_and_root(image_tree, tmp_path):
    root = image_tree["root"]
    os.rename(os.path.join(root, "dog", "d2.bmp"), os.path.join(root, "dog", "d 2.bmp"))
    ann = tmp_path / "list.txt"
    ann.write_text("# a comment\n\nbird/b0.png 0\n  cat/a.PNG  \ndog/d 2.bmp 2\n" + f"{root}/cat/z.jpg 1\n")
    src = ImageList(str(ann), root=root)
    assert len(src) == 4
    assert src.paths[:3] == ["bird/b0.png", "cat/a.PNG", "dog/d 2.bmp"]
    assert src.get_gt_labels().tolist() == [0, -1, 2, 1]
    assert src.CLASSES is None
    samples = dict((s[0], s[2]) for s in image_tree["samples"])
    np.testing.assert_array_equal(as_array(src.get_img(0)), samples["bird/b0.png"])
    np.testing.assert_array_equal(as_array(src.get_img(2)), samples["dog/d2.bmp"])
    assert src.get_img(3).size == (5, 6)  # absolute path used as it is


def test_image_list_default_root_is_list_folder(image_tree):
    ann = os.path.join(image_tree["root"], "train.txt")
    with open(ann, "w") as fh:
        fh.write("cat/a.PNG 1\n")
    src = ImageList(ann, classes=["bird", "cat"])
    np.testing.assert_array_equal(as_array(src.get_img(0)), image_tree["samples"][1][2])
    assert src.CLASSES == ("bird", "cat")


def test_image_list_errors(tmp_path):
    ann = tmp_path / "list.txt"
    ann.write_text("a.png 1\n# ok\nb.png one\n")
    with pytest.raises(ValueError) as info:
        ImageList(str(ann), root=str(tmp_path))
    assert f"{ann}:3:" in str(info.value) and "'b.png one'" in str(info.value)
    ann.write_text("a.png -3\n")
    with pytest.raises(ValueError, match=r"list.txt:1: label must be >= 0"):
        ImageList(str(ann))
    with pytest.raises(FileNotFoundError, match="ImageList: ann_file .*missing.txt' does not exist"):
        ImageList(str(tmp_path / "missing.txt"))
    ann.write_text("a.png 1\n")
    with pytest.raises(FileNotFoundError, match="ImageList: root .* does not exist"):
        ImageList(str(ann), root=str(tmp_path / "nowhere"))
    src = ImageList(str(ann))
    with pytest.raises(BadSampleError, match="a.png"):
        src.get_img(0)  # listed but missing: reported when loaded


# -- CIFAR ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,cls", [("cifar10", CIFAR10), ("cifar100", CIFAR100)])
def test_cifar(write_cifar, kind, cls):
    data = write_cifar(kind)
    for root in (data["parent"], data["folder"]):
        for split in ("train", "test"):
            src = cls(root, split=split)
            images, labels = data[split]
            assert len(src) == len(images)
            assert src.get_gt_labels().tolist() == labels.tolist()
            assert src.CLASSES == tuple(data["classes"])
            for i in (0, len(src) - 1):
                img = src.get_img(i)
                assert img.mode == "RGB" and img.size == (32, 32)
                np.testing.assert_array_equal(as_array(img), images[i])
    assert len(cls(data["parent"])) == (15 if kind == "cifar10" else 3)
    grey = cls(data["parent"], split="test", color_type="grayscale").get_img(0)
    assert grey.mode == "L"


def test_cifar_errors(write_cifar, tmp_path):
    data = write_cifar("cifar10")
    os.remove(os.path.join(data["folder"], "data_batch_3"))
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        CIFAR10(data["parent"])
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        CIFAR10(data["parent"], split="val")
    with pytest.raises(FileNotFoundError, match=r"CIFAR10: root '.*nope' does not exist"):
        CIFAR10(str(tmp_path / "nope"))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(os.path.join(data["folder"], "test_batch"), "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(ValueError, match="refusing to load"):
        CIFAR10(data["folder"], split="test")


# -- MNIST / Fashion-MNIST ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files(write_idx, gz):
    data = write_idx(gz=gz)
    for split in ("train", "test"):
        src = MNIST(data["root"], split=split)
        images, labels = data[split]
        assert len(src) == len(images)
        assert src.get_gt_labels().tolist() == labels.tolist()
        img = src.get_img(1)
        assert img.mode == "L"
        np.testing.assert_array_equal(as_array(img), images[1])
    rgb = MNIST(data["root"], color_type="color").get_img(1)
    assert rgb.mode == "RGB"
    np.testing.assert_array_equal(as_array(rgb), np.repeat(data["train"][0][1][..., None], 3, axis=2))


def test_fashion_mnist_in_raw_subdir_and_class_names(write_idx, tmp_path):
    data = write_idx(sub="fm/FashionMNIST/raw")
    src = FashionMNIST(str(tmp_path / "fm"), split="test")
    assert src.image_file.startswith(data["root"])
    assert src.CLASSES == FASHION_MNIST_CLASSES and src.CLASSES[9] == "Ankle boot"
    np.testing.assert_array_equal(as_array(src.get_img(2)), data["test"][0][2])


def test_idx_validation_names_file(write_idx, tmp_path):
    data = write_idx(gz=False)
    path = os.path.join(data["root"], "train-images-idx3-ubyte")
    raw = bytearray(open(path, "rb").read())
    raw[3] = 1  # wrong number of dimensions
    open(path, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match=f"{path}: IDX file has 1 dimensions, expected 3"):
        MNIST(data["root"])
    raw[3] = 3
    raw[2] = 0x0D  # float data
    open(path, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match=f"{path} is not an unsigned-byte IDX file"):
        read_idx(path, 3)
    raw[2] = 0x08
    open(path, "wb").write(bytes(raw[:-5]))  # truncated data
    with pytest.raises(ValueError, match=f"{path}: IDX size mismatch"):
        MNIST(data["root"])
    os.remove(os.path.join(data["root"], "t10k-images-idx3-ubyte"))
    bad_gz = os.path.join(data["root"], "t10k-images-idx3-ubyte.gz")
    open(bad_gz, "wb").write(b"not gzip at all")
    with pytest.raises(ValueError, match=f"cannot read IDX file {bad_gz}"):
        MNIST(data["root"], split="test")


def test_mnist_missing_files_message(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"MNIST: root '.*nowhere' does not exist; put the MNIST IDX"):
        MNIST(str(tmp_path / "nowhere"))
    monkeypatch.setattr(FashionMNIST, "system_dirs", (str(tmp_path / "no-system-copy"),))
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(str(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert "no train-images-idx3-ubyte[.gz]" in message and "apt-get install -y dataset-fashion-mnist" in message


@pytest.fixture(scope="module")
def system_fashion_mnist():
    if not os.path.isfile(os.path.join(SYSTEM_FASHION_MNIST, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST is not installed in {SYSTEM_FASHION_MNIST} (apt-get install -y dataset-fashion-mnist)")
    return FashionMNIST(split="train"), FashionMNIST(split="test")


def test_system_fashion_mnist(system_fashion_mnist):
    train, test = system_fashion_mnist
    assert len(train) == 60000 and len(test) == 10000
    assert np.bincount(train.get_gt_labels()).tolist() == [6000] * 10
    assert np.bincount(test.get_gt_labels()).tolist() == [1000] * 10
    assert train.get_gt_labels()[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.get_gt_labels()[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    img = train.get_img(0)
    assert img.mode == "L" and img.size == (28, 28)
    assert train.CLASSES[train.get_gt_labels()[0]] == "Ankle boot"


# -- NumpyArrays ---------------------------------------------------------------------------------------------------------
def test_numpy_arrays(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (4, 5, 6), dtype=np.uint8)
    colour = np.random.default_rng(1).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", images=grey, labels=np.array([3, 1, 0, 2]), classes=np.array(list("abcd")))
    np.savez(tmp_path / "colour.npz", x=colour)
    src = NumpyArrays(str(tmp_path / "grey.npz"))
    assert len(src) == 4 and src.get_gt_labels().tolist() == [3, 1, 0, 2]
    assert src.CLASSES == ("a", "b", "c", "d")
    assert src.get_img(2).mode == "L"
    np.testing.assert_array_equal(as_array(src.get_img(2)), grey[2])
    np.testing.assert_array_equal(as_array(NumpyArrays(str(tmp_path / "grey.npz"), color_type="color").get_img(2)),
                                  np.repeat(grey[2][..., None], 3, axis=2))
    src = NumpyArrays(str(tmp_path / "colour.npz"), images_key="x")
    assert src.get_gt_labels().tolist() == [-1] * 4 and src.CLASSES is None
    assert src.get_img(3).mode == "RGB"
    np.testing.assert_array_equal(as_array(src.get_img(3)), colour[3])
    with pytest.raises(ValueError, match=r"has no array 'images' \(images_key\); it has x"):
        NumpyArrays(str(tmp_path / "colour.npz"))
    np.savez(tmp_path / "float.npz", images=grey.astype(np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        NumpyArrays(str(tmp_path / "float.npz"))
    with pytest.raises(FileNotFoundError, match="NumpyArrays: file"):
        NumpyArrays(str(tmp_path / "missing.npz"))


# -- common -------------------------------------------------------------------------------------------------------------
def test_sources_pickle_for_workers(image_tree, write_cifar, write_idx, tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 3, 3), np.uint8))
    sources = [
        ImageFolder(image_tree["root"]),
        CIFAR10(write_cifar("cifar10")["parent"]),
        MNIST(write_idx()["root"]),
        NumpyArrays(str(tmp_path / "a.npz")),
    ]
    for src in sources:
        copy = pickle.loads(pickle.dumps(src))
        assert len(copy) == len(src)
        np.testing.assert_array_equal(as_array(copy.get_img(1)), as_array(src.get_img(1)))


def test_build_through_core(image_tree, write_idx):
    src = build({"type": "ImageFolder", "root": image_tree["root"], "color_type": "grayscale"}, "data_sources")
    assert isinstance(src, ImageFolder) and src.get_img(0).mode == "L"
    src = build({"type": "MNIST", "root": write_idx()["root"], "split": "test"}, "data_sources")
    assert len(src) == 3
    with pytest.raises(ConfigError, match="did you mean 'root'"):
        build({"type": "ImageFolder", "rot": image_tree["root"]}, "data_sources")
    with pytest.raises(ConfigError, match="ImageFolder.*expects str"):
        build({"type": "ImageFolder", "root": 3}, "data_sources")
    with pytest.raises(ConfigError, match="FileNotFoundError: ImageFolder: root '/nonexistent/x' does not exist"):
        build({"type": "ImageFolder", "root": "/nonexistent/x"}, "data_sources")
