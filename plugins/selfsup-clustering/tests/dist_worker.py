"""Worker of test_distributed.py (run as a script, one process per rank; not a test module).

Usage: python dist_worker.py NPZ OUT_DIR  with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set
(or :func:`run` in-process for one process without a process group).
Extracts the features of 66 images with a tiny DeepCluster, clusters them with the
DeepClusterHook (k-means on process 0, broadcast), runs Sinkhorn on this rank's share of a
fixed score matrix, and writes what it got to OUT_DIR/rank{R}_of{W}.pt.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as torch_dist
from selfsup_core.engine import dist


def run(npz: str, out_dir: Path, rank: int, world: int) -> None:
    """Extract, cluster and run Sinkhorn as process ``rank`` of ``world`` (process group set up)."""
    from selfsup_core.build import Builder
    from selfsup_data.datasets.deepcluster import DeepClusterDataset
    from selfsup_data.sources import NumpyArrays, Subset
    from selfsup_models.backbones.resnet import ResNet
    from selfsup_models.heads import ClsHead
    from selfsup_models.heads.swav import sinkhorn
    from selfsup_models.necks import AvgPool2dNeck

    from selfsup_clustering.deepcluster import DeepCluster
    from selfsup_clustering.deepcluster_hook import DeepClusterHook

    torch.manual_seed(0)
    model = DeepCluster(ResNet(depth=18, in_channels=1, stem_channels=4, base_channels=4, stem_type="cifar",
                               norm_cfg={"type": "BN"}),
                        with_sobel=False, neck=AvgPool2dNeck(), head=ClsHead(in_channels=32, num_classes=5))
    pipeline = [Builder().build(t, "transforms") for t in
                [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True}]]
    # 66 samples: not a multiple of 4 per rank x 2 ranks, so the last shard is padded
    dataset = DeepClusterDataset(Subset(source=NumpyArrays(file=npz), num_samples=66, seed=0), pipeline)
    runner = SimpleNamespace(model=model, dataset=dataset, rank=rank, world_size=world, device=torch.device("cpu"),
                             settings=SimpleNamespace(workers_per_gpu=0, seed=0), autocast_dtype=None,
                             channels_last=False)
    hook = DeepClusterHook(extractor={"pipeline": pipeline, "samples_per_gpu": 8},
                           clustering={"k": 5, "pca_dim": 8, "backend": "torch"})
    features = hook.extract(runner)
    labels = hook.cluster(features)

    scores = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    share = scores.shape[0] // world
    codes = sinkhorn(scores[rank * share:(rank + 1) * share], epsilon=0.05, iterations=3)
    torch.save({"features": features, "labels": labels, "codes": codes}, out_dir / f"rank{rank}_of{world}.pt")


def main() -> None:
    npz, out_dir = sys.argv[1], Path(sys.argv[2])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    run(npz, out_dir, rank, world)
    dist.destroy(wait=True)


if __name__ == "__main__":
    main()
