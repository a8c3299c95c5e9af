"""The device-resident data path: crop law, batch order and seeds, exact resume, the fit check."""
from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from selfsup_core.config import load_config
from selfsup_core.engine.data import SeededSampler
from selfsup_core.engine.data_path import auto_workers, build_data_path
from selfsup_core.engine.trainer import RunInterrupted, Trainer
from selfsup_core.errors import ConfigError
from selfsup_data.datasets.views import MultiViewDataset
from selfsup_data.resident import ResidentBatches, crop_boxes, decode_all, plan_resident, resized_crops
from selfsup_data.sources.arrays import NumpyArrays
from selfsup_data.transforms import GaussianBlur

QUICKSTART = Path(__file__).resolve().parents[3] / "examples/configs/simclr_resnet18-w16_1xb128-coslr-3e_fashion-mnist.toml"


def _npz(tmp_path: Path, n: int = 48) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, size=(n, 12, 12), dtype=np.uint8), labels=np.arange(n) % 10)
    return path


def _simclr_views(augment_on: str = "cpu") -> list:
    return [v2.RandomResizedCrop(12, scale=(0.2, 1.0), antialias=True), v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4)], p=0.8), GaussianBlur(0.1, 1.0, p=0.2),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.25])]


def test_full_crop_is_the_identity_and_the_fallback_is_torchvisions_central_crop():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 8, 8)
    boxes = crop_boxes(3, 8, 8, (1.0, 1.0), (1.0, 1.0), torch.device("cpu"))
    assert boxes.tolist() == [[0.0, 0.0, 8.0, 8.0]] * 3
    torch.testing.assert_close(resized_crops(images, boxes, (8, 8)), images, atol=1e-6, rtol=0)
    # no try can fit an aspect ratio of 10..20 at >= 20 % of the area: central crop w = 8, h = round(8 / 10)
    boxes = crop_boxes(4, 8, 8, (0.2, 1.0), (10.0, 20.0), torch.device("cpu"))
    assert boxes.tolist() == [[3.0, 0.0, 1.0, 8.0]] * 4
    # a 2x3 crop at (2, 4) enlarged to 4x6 is torchvision's crop-then-resize (bilinear, no antialias)
    box = torch.tensor([[2.0, 4.0, 2.0, 3.0]])
    expected = TF.resized_crop(images[:1], 2, 4, 2, 3, [4, 6], antialias=False)
    torch.testing.assert_close(resized_crops(images[:1], box, (4, 6)), expected, atol=1e-5, rtol=0)


def test_crop_boxes_stay_inside_and_follow_the_scale_law():
    torch.manual_seed(0)
    boxes = crop_boxes(4000, 28, 28, (0.2, 1.0), (3 / 4, 4 / 3), torch.device("cpu"))
    top, left, h, w = boxes.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 28) & (left + w <= 28) & (h >= 1) & (w >= 1)).all())
    share = (h * w / 784).mean().item()
    assert 0.55 < share < 0.62  # E[U(0.2, 1)] = 0.6, minus the tries that overflow and are redrawn


def _dataset(tmp_path: Path, augment_on: str = "cpu") -> MultiViewDataset:
    return MultiViewDataset(NumpyArrays(file=str(_npz(tmp_path))), num_views=[2],
                            pipelines=[_simclr_views()], augment_on=augment_on)


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_batches_follow_the_seeded_sampler_and_resume_mid_epoch_exactly(tmp_path, augment_on):
    dataset = _dataset(tmp_path, augment_on)
    images = decode_all(dataset)
    assert images.shape == (48, 1, 12, 12) and torch.equal(images[5, 0], torch.from_numpy(dataset.data_source.images[5]))
    plan = plan_resident(dataset)

    def epoch(seed: int, epoch: int, start: int = 0) -> list[dict]:
        sampler = SeededSampler(48, seed=seed)
        sampler.set_epoch(epoch, start)
        loader = ResidentBatches(plan, images, torch.as_tensor(dataset.gt_labels), sampler, 8, True)
        order = [i for i, _ in sampler]
        batches = list(loader)
        assert torch.cat([b["idx"] for b in batches]).tolist() == order[: len(batches) * 8]
        return batches

    first, again = epoch(3, 0), epoch(3, 0)
    assert len(first) == 6
    assert first[0]["img"][0].shape == (8, 1, 12, 12) and first[0]["img"][0].dtype == torch.float32
    for a, b in zip(first, again):
        assert torch.equal(a["idx"], b["idx"]) and all(torch.equal(x, y) for x, y in zip(a["img"], b["img"]))
    assert torch.equal(first[0]["label"], torch.as_tensor(dataset.gt_labels)[first[0]["idx"]])
    assert not torch.equal(first[0]["img"][0], first[0]["img"][1])  # two different views
    resumed = epoch(3, 0, start=16)  # two batches done
    for a, b in zip(first[2:], resumed):
        assert torch.equal(a["idx"], b["idx"]) and all(torch.equal(x, y) for x, y in zip(a["img"], b["img"]))
    assert not torch.equal(epoch(3, 1)[0]["idx"], first[0]["idx"])
    assert not torch.equal(epoch(4, 0)[0]["idx"], first[0]["idx"])


def test_multi_crop_groups_get_their_own_sizes(tmp_path):
    small = [v2.RandomResizedCrop(6, scale=(0.05, 0.3)), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    dataset = MultiViewDataset(NumpyArrays(file=str(_npz(tmp_path))), num_views=[2, 3],
                               pipelines=[_simclr_views(), small])
    sampler = SeededSampler(48, seed=0)
    loader = ResidentBatches(plan_resident(dataset), decode_all(dataset), torch.as_tensor(dataset.gt_labels),
                             sampler, 4, True)
    views = next(iter(loader))["img"]
    assert [tuple(v.shape) for v in views] == [(4, 1, 12, 12)] * 2 + [(4, 1, 6, 6)] * 3
    assert all(0 <= float(v.min()) and float(v.max()) <= 1 for v in views[2:])  # no Normalize in group 1


def _trainer_stub(tmp_path: Path, resident, memory_share: float = 0.25) -> SimpleNamespace:
    config = load_config(QUICKSTART)
    settings = SimpleNamespace(resident=resident, resident_memory_share=memory_share, samples_per_gpu=8, seed=0,
                               drop_last=True, replace=False, workers_per_gpu=0, persistent_workers=False,
                               prefetch_factor=None, pin_memory="auto")
    return SimpleNamespace(config=config, settings=settings, dataset=_dataset(tmp_path), device=torch.device("cpu"),
                           rank=0, world_size=1)


def test_the_fit_check_refuses_a_forced_resident_set_in_one_line_and_auto_falls_back(tmp_path):
    with pytest.raises(ConfigError) as info:
        build_data_path(_trainer_stub(tmp_path, True), memory=10_000)
    message = str(info.value)
    assert "\n" not in message and "data.resident" in message
    assert "NumpyArrays" in message and "0.01 MB as uint8 (48 x 1x12x12)" in message
    assert "0.01 MB available on cpu" in message and "resident_memory_share = 0.25" in message
    loader, _, description = build_data_path(_trainer_stub(tmp_path, "auto"), memory=10_000)
    assert description.startswith("DataLoader, 0 workers (not resident: the training set NumpyArrays")
    assert isinstance(loader, torch.utils.data.DataLoader)
    loader, _, description = build_data_path(_trainer_stub(tmp_path, "auto"), memory=10**9)
    assert description == "resident on cpu (0.01 MB uint8)" and isinstance(loader, ResidentBatches)
    assert len(loader) == 6
    stub = _trainer_stub(tmp_path, "auto")
    stub.settings.workers_per_gpu = 1  # on a CPU a loader worker overlaps augmentation with training
    loader, _, description = build_data_path(stub, memory=10**9)
    assert description == "DataLoader, 1 worker (not resident: on a CPU with loader workers; data.resident = true forces it)"


def test_auto_workers_share_the_cores_among_local_processes():
    assert auto_workers(16, 1) == 15 and auto_workers(16, 4) == 3 and auto_workers(2, 1) == 1
    assert auto_workers(1, 1) == 0 and auto_workers(64, 1) == 16


class _StopAt:
    """Asks the trainer to stop (as SIGTERM would) after iteration ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def selfsup_after_iter(self, runner, outputs) -> None:
        if runner.iter == self.at:
            runner._stop_signal = signal.SIGTERM


def _tiny_simclr(tmp_path: Path) -> Path:
    from selfsup_core.testing import derive_config

    source = {"type": "NumpyArrays", "file": str(_npz(tmp_path))}
    pipeline = [{"type": "RandomResizedCrop", "size": 12, "scale": [0.2, 1.0], "antialias": True},
                {"type": "RandomHorizontalFlip"}, {"type": "ToImage"},
                {"type": "ToDtype", "dtype": "float32", "scale": True}, {"type": "Normalize", "mean": [0.5], "std": [0.25]}]
    return derive_config(QUICKSTART, tmp_path / "tiny.toml",
                         replace={"data.train.data_source": source, "evaluation": {"interval": 0}},
                         values={"data.train.pipelines": [pipeline], "data.train.augment_on": "cpu",
                                 "data.samples_per_gpu": 8, "data.workers_per_gpu": 0, "data.resident": True,
                                 "runner.max_epochs": 2, "runner.precision": "fp32", "model.backbone.depth": 18,
                                 "model.backbone.base_channels": 2, "model.backbone.stem_channels": 2,
                                 "model.neck.in_channels": 16, "model.neck.hid_channels": 8,
                                 "model.neck.out_channels": 4, "lr_config.warmup_iters": 2, "log_config.interval": 2})


def test_a_resident_run_interrupted_mid_epoch_resumes_bitwise_exactly(tmp_path):
    torch.set_num_threads(1)
    config = _tiny_simclr(tmp_path)
    reference = Trainer(load_config(config), work_dir=tmp_path / "ref", device="cpu")
    reference.run()
    assert reference.data_path.startswith("resident on cpu")
    stopped = Trainer(load_config(config), work_dir=tmp_path / "cut", device="cpu")
    stopped.hooks.append(("stop_at", _StopAt(8)))
    with pytest.raises(RunInterrupted):
        stopped.run()
    state = torch.load(tmp_path / "cut/latest.pth", weights_only=True)
    assert (state["meta"]["epoch"], state["meta"]["inner_iter"]) == (1, 3)
    Trainer(load_config(config), work_dir=tmp_path / "cut", device="cpu", resume="auto").run()
    a = torch.load(tmp_path / "ref/latest.pth", weights_only=True)
    b = torch.load(tmp_path / "cut/latest.pth", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_selfsup_run_states_the_resident_data_path(tmp_path):
    from selfsup_core.testing import run_selfsup

    config = _tiny_simclr(tmp_path)
    proc = run_selfsup(config, "--work-dir", tmp_path / "cli", "--device", "cpu", "--cfg-options",
                       "runner.max_epochs=1", "data.resident=\"auto\"", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data: resident on cpu (0.01 MB uint8)" in proc.stderr
