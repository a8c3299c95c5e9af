"""ODC (Zhan et al., "Online Deep Clustering for Unsupervised Representation Learning",
CVPR 2020): DeepCluster with the clustering updated online instead of once per epoch.

A samples memory (a running-average feature and a pseudo-label per sample) and a centroids
memory (``ODCMemory``, selfsup-models) are filled once by k-means before training (the
``DeepClusterHook`` with ``init_memory = true``). Then every iteration the network is trained
to classify each image into its memory label, the batch's features are blended into the
samples memory and those samples relabelled to their nearest centroid; the :class:`ODCHook`
recomputes the centroids every ``centroids_update_interval`` iterations, dissolves clusters
smaller than ``min_cluster`` (refilling them by splitting the largest cluster) and re-weights
the loss by cluster size.
"""
from __future__ import annotations

from typing import Any

import torch
from selfsup_core.api import SelfSupError
from torch import nn

from .deepcluster import ClusteringAlgorithm, InitCfg
from .kmeans import cluster_stats


class ODC(ClusteringAlgorithm):
    """ODC: ``[Sobel] -> backbone -> ODCNeck -> ClsHead`` on labels from an ``ODCMemory``.

    Args:
        backbone: e.g. ResNet-50 (``in_channels = 2`` with ``with_sobel``).
        with_sobel: a fixed grey-scale + Sobel layer in front of the backbone (ODC: no).
        neck: an ``ODCNeck``; its output is both classified and stored in the memory.
        head: a ``ClsHead`` with ``num_classes`` = the memory's ``num_classes``.
        memory_bank: an ``ODCMemory`` with ``length`` = the number of training samples and
            ``feat_dim`` = the neck's ``out_channels``.
        init_cfg: initialisation of the whole algorithm after the components' own.

    ``forward_train(img, idx) -> {"loss", "acc", "change_ratio"}``: cross-entropy against
    ``memory_bank.label_bank[idx]`` (weighted by the memory's class weights), then the
    memory update; ``change_ratio`` is the fraction of the batch's samples whose label
    changed (logged, not optimised).
    """

    __selfsup_arg_kinds__ = {"memory_bank": "memories"}

    def __init__(self, backbone: nn.Module, with_sobel: bool = False, neck: nn.Module | None = None,
                 head: nn.Module | None = None, memory_bank: nn.Module | None = None, init_cfg: InitCfg = None) -> None:
        if neck is None or head is None or memory_bank is None:
            raise ValueError("ODC: neck (ODCNeck), head (ClsHead) and memory_bank (ODCMemory) are all required")
        super().__init__(backbone, neck, head, with_sobel, init_cfg)
        if getattr(memory_bank, "num_classes", None) != self.num_classes:
            raise ValueError(f"ODC: memory_bank.num_classes = {getattr(memory_bank, 'num_classes', None)} but the head "
                             f"classifies {self.num_classes} classes; make them equal")
        self.memory_bank = memory_bank
        self.loss_weight.copy_(memory_bank.loss_weight)
        self.init_weights()
        # The memory's replicas are kept equal by the memory itself (gathered updates, broadcasts
        # from process 0); DistributedDataParallel must not broadcast them at every forward
        # (the samples memory of ImageNet is 1.3 GB).
        ignore = getattr(nn.parallel.DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
        if ignore is not None:
            ignore(self, [f"memory_bank.{name}" for name, _ in memory_bank.named_buffers()])

    def forward_train(self, img: torch.Tensor, idx: torch.Tensor | None = None, **kwargs: Any
                      ) -> dict[str, torch.Tensor]:
        if idx is None:
            raise ValueError("ODC: the batch has no idx (sample indices); use a selfsup-data dataset")
        if isinstance(img, (list, tuple)):
            img = img[0]
        idx = idx.to(self.memory_bank.label_bank.device).long()
        feature = self.neck(self.extract_feat(img))
        losses = self.head.loss(self.head(feature), self.memory_bank.label_bank[idx])
        losses["change_ratio"] = self.memory_bank.update_samples_memory(idx, feature[0].detach())
        return losses

    @torch.no_grad()
    def set_reweight(self, labels: torch.Tensor | None = None, reweight_pow: float = 0.5) -> None:
        """Class weights from the memory (``ODCMemory.set_reweight``: ``(n_c + 1e-5) **
        -reweight_pow``, normalised) for ``labels`` (default: the memory's label bank),
        used by the head's cross-entropy."""
        self.loss_weight.copy_(self.memory_bank.set_reweight(labels, reweight_pow))


class ODCHook:
    """Online updates of ODC's memory between iterations (MMSelfSup's ``ODCHook``).

    After iteration ``i`` (1-based count ``i + 1``):

    - every ``centroids_update_interval`` iterations: ``update_centroids_memory()``;
    - every ``deal_with_small_clusters_interval`` iterations: ``deal_with_small_clusters()``;
    - every iteration, when ``reweight``: the loss's class weights from the current labels
      (``reweight_pow``);
    - every ``evaluate_interval`` iterations: the number of empty clusters and the smallest
      and largest cluster size are logged (``mode = "clustering"`` records).

    Args: as above (MMSelfSup's names).
    """

    def __init__(self, centroids_update_interval: int = 10, deal_with_small_clusters_interval: int = 1,
                 evaluate_interval: int = 50, reweight: bool = True, reweight_pow: float = 0.5) -> None:
        for name, value in (("centroids_update_interval", centroids_update_interval),
                            ("deal_with_small_clusters_interval", deal_with_small_clusters_interval),
                            ("evaluate_interval", evaluate_interval)):
            if value < 1:
                raise ValueError(f"ODCHook: {name} must be >= 1, got {value}")
        self.centroids_update_interval = int(centroids_update_interval)
        self.deal_with_small_clusters_interval = int(deal_with_small_clusters_interval)
        self.evaluate_interval = int(evaluate_interval)
        self.reweight = bool(reweight)
        self.reweight_pow = float(reweight_pow)

    @staticmethod
    def _memory(runner: Any) -> Any:
        memory = getattr(runner.model, "memory_bank", None)
        if memory is None or not callable(getattr(memory, "update_centroids_memory", None)):
            raise SelfSupError(f"ODCHook: the algorithm {type(runner.model).__name__} has no ODCMemory memory_bank; "
                               "remove the ODCHook from [[hooks]] or use model.type = 'ODC'")
        return memory

    def selfsup_before_run(self, runner: Any) -> None:
        self._memory(runner)

    def selfsup_after_iter(self, runner: Any, outputs: dict[str, Any]) -> None:
        memory = runner.model.memory_bank
        done = runner.iter + 1
        if done % self.centroids_update_interval == 0:
            memory.update_centroids_memory()
        if done % self.deal_with_small_clusters_interval == 0:
            memory.deal_with_small_clusters()
        if self.reweight:
            runner.model.set_reweight(None, self.reweight_pow)
        if done % self.evaluate_interval == 0:
            runner.log_metrics({"mode": "clustering", **cluster_stats(memory.label_bank, memory.num_classes)})


__all__ = ["ODC", "ODCHook"]
