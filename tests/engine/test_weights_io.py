"""The core's weights reading (:mod:`selfsup_core.engine.weights_io`): ``.safetensors`` through the
``safetensors`` package (atomic, shared and strided tensors, one-line errors) and the refusal of
checkpoints that hold objects (``weights_only=True``)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfsup_core.api import WeightsError, load_safetensors, read_safetensors_metadata, read_state_dict, save_safetensors
from selfsup_core.engine.weights_io import SafetensorsError


# -- safetensors ------------------------------------------------------------------------------
def test_safetensors_round_trip_keeps_every_dtype_shape_and_value(tmp_path: Path) -> None:
    tensors = {
        "f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 2).bfloat16(),
        "f64": torch.randn(2, dtype=torch.float64), "i64": torch.arange(6).reshape(2, 3), "u8": torch.arange(4, dtype=torch.uint8),
        "flag": torch.tensor([True, False]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
        "strided": torch.randn(4, 6)[:, ::2],  # non-contiguous: written as its values
    }
    path = tmp_path / "w.safetensors"
    save_safetensors(tensors, path, metadata={"format": "pt", "epoch": 3})
    loaded = load_safetensors(path)
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name
    assert read_safetensors_metadata(path) == {"format": "pt", "epoch": "3"}
    assert (8 + int.from_bytes(path.read_bytes()[:8], "little")) % 8 == 0  # data aligned as the reference writes it


def test_safetensors_reads_unsigned_and_complex_tensors_and_writes_shared_ones(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    tensors = {"u16": torch.tensor([0, 7, 65535], dtype=torch.uint16), "u32": torch.tensor([1, 2**32 - 1], dtype=torch.uint32),
               "u64": torch.tensor([3, 2**63], dtype=torch.uint64), "c64": torch.randn(3, dtype=torch.complex64)}
    theirs = tmp_path / "theirs.safetensors"
    st.save_file(tensors, str(theirs))
    loaded = load_safetensors(theirs)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    weight = torch.randn(4, 4)
    tied = {"embed": weight, "head": weight, "half": weight[:2]}  # shared storage: the package alone refuses
    save_safetensors(tied, tmp_path / "tied.safetensors")
    back = load_safetensors(tmp_path / "tied.safetensors")
    assert torch.equal(back["embed"], weight) and torch.equal(back["head"], weight) and torch.equal(back["half"], weight[:2])


def test_safetensors_files_agree_with_the_safetensors_package(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).bfloat16()}
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    save_safetensors(tensors, ours, metadata={"k": "v"})
    st.save_file(tensors, str(theirs), metadata={"k": "v"})
    for name, value in st.load_file(str(ours)).items():
        assert torch.equal(value, tensors[name])
    for name, value in load_safetensors(theirs).items():
        assert torch.equal(value, tensors[name])
    assert read_safetensors_metadata(theirs) == {"k": "v"}


def test_a_file_that_is_not_safetensors_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(SafetensorsError, match="bad.safetensors: not a safetensors file"):
        load_safetensors(bad)
    truncated = tmp_path / "cut.safetensors"
    save_safetensors({"w": torch.randn(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-40])
    with pytest.raises(SafetensorsError, match="cut.safetensors: a tensor lies outside the file"):
        load_safetensors(truncated)



def test_checkpoints_with_objects_are_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"backbone.w": torch.zeros(1)}, "meta": {"config": Path("x")}}, path)
    with pytest.raises(WeightsError, match="not plain tensors and containers, so it is not loaded"):
        read_state_dict(path)
