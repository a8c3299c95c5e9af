"""Feature extraction: which output, pooling, order, and the same features from 2 gloo
processes as from one."""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from selfsup_eval.evaluation import EvalContext
from selfsup_eval.features import extract, extract_dataset, model_output, pool_output
from selfsup_eval.knn import KNN


class Images(torch.utils.data.Dataset):
    """``length`` deterministic 3x8x8 images; label = index % 3."""

    def __init__(self, length: int = 13, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(length, 3, 8, 8, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"img": self.images[i], "label": i % 3, "idx": i}


class TinyAlgorithm(nn.Module):
    """conv-BN-ReLU backbone and a linear neck; ``mode="extract"`` returns the backbone's
    outputs as a tuple, like MMSelfSup algorithms."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(6 * 8 * 8, 4))
        with torch.no_grad():  # non-trivial running statistics: eval mode must use them
            self.backbone[1].running_mean.uniform_(-1, 1)
            self.backbone[1].running_var.uniform_(0.5, 2)

    def forward(self, img: torch.Tensor, mode: str = "train") -> object:
        if mode == "extract":
            return (self.backbone(img),)
        raise ValueError(mode)


def _context(model: nn.Module, rank: int = 0, world_size: int = 1, **kwargs) -> EvalContext:
    return EvalContext(model=model, datasets={"train": lambda: Images(13), "test": lambda: Images(7, seed=1)},
                       samples_per_gpu=kwargs.pop("samples_per_gpu", 4), workers_per_gpu=kwargs.pop("workers", 0),
                       rank=rank, world_size=world_size, **kwargs)


def test_pooling_of_maps_tokens_class_tokens_and_tuples():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(pool_output(maps), maps.mean(dim=(2, 3)))
    assert torch.equal(pool_output((maps * 0, maps)), maps.mean(dim=(2, 3)))  # the last stage
    assert torch.equal(pool_output(maps, "flatten"), maps.reshape(2, 12))
    tokens = torch.randn(2, 5, 4)
    assert torch.equal(pool_output(tokens), tokens.mean(dim=1))
    cls_token = torch.randn(2, 4)
    assert torch.equal(pool_output(([maps, cls_token],)), cls_token)  # ViT: [patch map, class token]
    with pytest.raises(TypeError, match="not a tensor of features"):
        pool_output({"a": maps})


def test_extract_backbone_and_neck_outputs_in_eval_mode_and_dataset_order():
    model = TinyAlgorithm().train()
    context = _context(model)
    images = Images(13).images
    with torch.no_grad():
        model.eval()
        backbone = model.backbone(images).mean(dim=(2, 3))
        neck = model.neck(model.backbone(images))
        model.train()
    extracted = extract(context, "train")
    torch.testing.assert_close(extracted.features, backbone, rtol=1e-5, atol=1e-6)
    assert extracted.labels.tolist() == [i % 3 for i in range(13)]
    torch.testing.assert_close(extract(context, "train", feature="neck").features, neck, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(extract(context, "train", feature="backbone").features, backbone, rtol=1e-5, atol=1e-6)
    assert model.training and model.backbone[1].training  # the training flags are restored
    assert extract(context, "train") is extracted  # cached per (split, feature, pool)


def test_a_plain_module_without_mode_and_a_model_without_backbone():
    flat = extract_dataset(_context(nn.Identity()), Images(5), pool="flatten")
    assert torch.equal(flat.features, Images(5).images.reshape(5, -1))
    with pytest.raises(ValueError, match="feature = 'backbone' needs a model with a backbone"):
        model_output(nn.Identity(), torch.zeros(1, 3, 8, 8), "backbone")


def test_loader_workers_give_the_same_features():
    model = TinyAlgorithm()
    one = extract_dataset(_context(model), Images(13))
    two = extract_dataset(_context(model, workers=2, samples_per_gpu=3), Images(13))
    torch.testing.assert_close(one.features, two.features, rtol=0, atol=0)


def _worker(rank: int, world_size: int, init_file: str, results: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        context = _context(TinyAlgorithm(), rank=rank, world_size=world_size, samples_per_gpu=3)
        features = extract(context, "train")
        knn = KNN(k=4, temperature=0.1).evaluate(context)
        results[rank] = {"features": features.features.tolist(), "labels": features.labels.tolist(), "knn": knn}
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_extract_the_same_features_in_the_same_order(tmp_path):
    single = _context(TinyAlgorithm(), samples_per_gpu=3)
    expected = extract(single, "train")
    expected_knn = KNN(k=4, temperature=0.1).evaluate(single)
    manager = mp.Manager()
    results = manager.dict()
    # 13 samples over 2 processes: 7 + 7 with one padded sample, dropped after the gather
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), results), nprocs=2, join=True)
    for rank in (0, 1):
        got = results[rank]
        torch.testing.assert_close(torch.tensor(got["features"]), expected.features, rtol=1e-5, atol=1e-6)
        assert got["labels"] == expected.labels.tolist()
        assert got["knn"] == expected_knn
