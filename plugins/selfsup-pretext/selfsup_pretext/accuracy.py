"""PretextAccuracy: how well a pretext-task model solves its own task on held-out images.

The evaluator runs ``model(img, mode="test")`` over a pretext dataset (``RotationPredDataset``,
``RelativeLocDataset``) and compares the arg-max of the returned ``"cls_score"`` rows with
the dataset's pretext labels (``rot_label``, ``patch_label``), flattened in the same
sample-major order. Use it from ``selfsup-run eval CONFIG --checkpoint CKPT --evaluator pretext``
or as the online evaluator, configured as::

    [[evaluation.evaluators]]
    type = "PretextAccuracy"
    [evaluation.evaluators.dataset]            # built like data.train: any pretext dataset
    type = "RotationPredDataset"
    pipeline = [{ type = "ToImage" }, { type = "ToDtype", dtype = "float32", scale = true }]
    data_source = { type = "FashionMNIST", root = "data/fashion-mnist", split = "test" }
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from selfsup_core.api import build_loader, dist, loader_batches, to_device
from selfsup_eval import EvalContext


class PretextAccuracy:
    """Top-1 accuracy of the pretext task (rotation, relative patch position).

    Args:
        dataset: the built pretext dataset to score (its own ``data_source``, usually the test
            split; deterministic pipelines give reproducible figures, though RelativeLoc's
            patch jitter stays random, seeded by the evaluation seed).
        label_key: the batch key of the pretext labels; ``None`` takes the one key ending in
            ``_label`` (``rot_label`` or ``patch_label``).
        samples_per_gpu: batch size per process (default: ``[evaluation] samples_per_gpu``).
            Each sample holds 4 (rotation) or 8 (patch pairs) images.

    Returns ``{"pretext_top1": fraction of correct predictions}`` over every image of every
    sample. Under torchrun each process scores its shard (without the padding samples) and
    the counts are summed, so every process returns the same number.
    """

    def __init__(self, dataset: Any, label_key: str | None = None, samples_per_gpu: int | None = None) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(f"PretextAccuracy: dataset must be a dataset table (e.g. type = \"RotationPredDataset\"), "
                             f"got {type(dataset).__name__}")
        if samples_per_gpu is not None and (isinstance(samples_per_gpu, bool) or samples_per_gpu < 1):
            raise ValueError(f"PretextAccuracy: samples_per_gpu must be a positive integer, got {samples_per_gpu!r}")
        self.dataset = dataset
        self.label_key = label_key
        self.samples_per_gpu = samples_per_gpu

    def _labels(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if self.label_key is not None:
            if self.label_key not in batch:
                raise ValueError(f"PretextAccuracy: label_key {self.label_key!r} is not in the dataset's samples "
                                 f"(keys: {', '.join(sorted(batch))})")
            return batch[self.label_key]
        keys = [k for k in batch if k.endswith("_label")]
        if len(keys) != 1:
            raise ValueError(f"PretextAccuracy: cannot tell the pretext labels among the sample keys "
                             f"{', '.join(sorted(batch))}; set label_key (e.g. \"rot_label\")")
        return batch[keys[0]]

    @torch.no_grad()
    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        length = len(self.dataset)
        if length == 0:
            raise ValueError("PretextAccuracy: the dataset is empty")
        loader, sampler = build_loader(
            self.dataset,
            batch_size=self.samples_per_gpu or context.samples_per_gpu,
            num_workers=context.workers_per_gpu,
            seed=context.seed,
            rank=context.rank,
            world_size=context.world_size,
            drop_last=False,
            pin_memory=context.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=None,
            shuffle=False,
        )
        sampler.set_epoch(0)
        remaining = len(range(context.rank, length, context.world_size))  # this shard without the padding
        counts = torch.zeros(2, dtype=torch.long, device=context.device)  # correct, total
        with context.eval_mode() as model:
            for batch in loader_batches(loader):
                if remaining <= 0:
                    break
                if not isinstance(batch, Mapping):
                    raise ValueError("PretextAccuracy: the dataset must yield dicts with 'img' and the pretext labels")
                batch = to_device(batch, context.device, context.device.type == "cuda")
                img, labels = batch["img"][:remaining], self._labels(batch)[:remaining]
                remaining -= len(img)
                with context.autocast():
                    output = model(img, mode="test")
                scores = output.get("cls_score") if isinstance(output, Mapping) else None
                if not isinstance(scores, torch.Tensor):
                    raise ValueError(f"PretextAccuracy: {type(model).__name__}.forward(mode='test') must return "
                                     "{'cls_score': scores}, one row per pretext label")
                labels = labels.reshape(-1)
                if scores.shape[0] != labels.shape[0]:
                    raise ValueError(f"PretextAccuracy: the model gave {scores.shape[0]} score rows for "
                                     f"{labels.shape[0]} pretext labels")
                counts[0] += (scores.argmax(dim=1) == labels).sum()
                counts[1] += labels.shape[0]
        counts = dist.all_reduce(counts, op="sum")
        correct, total = counts.tolist()
        return {"pretext_top1": correct / max(total, 1)}


__all__ = ["PretextAccuracy"]
