"""The InterCLR trainer hook (MMSelfSup 0.x ``InterCLRHook``): k-means of the training set
into the memory bank, online cluster maintenance, loss-weight warm-up.

- before the run (``initial``): features of the un-augmented training set (the extraction
  pass of the clustering plugin's ``DeepClusterHook``: ``extractor.pipeline`` or
  ``extractor.dataset``), k-means (the clustering plugin's ``Kmeans``, 0.x config: ``k`` =
  the number of clusters, no PCA) on process 0, broadcast, and the ``InterCLRMemory`` filled
  with the features and labels (``init_memory``). A resumed run finds the memory in the
  checkpoint and does not cluster again;
- before every epoch: ``intra_loss_weight = 1`` and ``inter_loss_weight = 0`` during the first
  ``warmup_epochs`` epochs, the configured weights after;
- after every iteration, with ``online_labels``: centroids recomputed every
  ``centroids_update_interval`` iterations, clusters smaller than the memory's ``min_cluster``
  dissolved every ``deal_with_small_clusters_interval`` iterations, cluster statistics logged
  every ``evaluate_interval`` iterations (``mode = "clustering"`` records);
- after every ``interval`` epochs, without ``online_labels``: a new k-means round whose labels
  replace the memory's (``assign_label``). With ``online_labels`` 0.x saves the bank to
  ``.npy`` files every ``interval`` epochs to resume from; here the checkpoints hold it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from selfsup_clustering.deepcluster_hook import DeepClusterHook
from selfsup_clustering.kmeans import cluster_stats
from selfsup_core.api import SelfSupError


class InterCLRHook(DeepClusterHook):
    """Clustering for ``InterCLRMoCo`` (see the module docstring for what runs when).

    Args:
        extractor: as ``DeepClusterHook``'s (``pipeline`` or ``dataset``, ``samples_per_gpu``,
            ``workers_per_gpu``).
        clustering: as ``DeepClusterHook``'s (``k`` = the memory's ``num_classes``; 0.x:
            ``pca_dim = -1``).
        centroids_update_interval, deal_with_small_clusters_interval, evaluate_interval:
            iterations between the online updates (0.x: 10, 1, 50).
        warmup_epochs: epochs trained with the intra-image loss only (0.x: 0).
        init_memory: fill the memory from the first k-means round (0.x: true).
        initial: cluster before the first epoch.
        online_labels: must equal the algorithm's ``online_labels``.
        interval: epochs between k-means rounds without ``online_labels``.
    """

    def __init__(self, extractor: Union[Mapping[str, Any], None] = None,
                 clustering: Union[Mapping[str, Any], None] = None, centroids_update_interval: int = 10,
                 deal_with_small_clusters_interval: int = 1, evaluate_interval: int = 50, warmup_epochs: int = 0,
                 init_memory: bool = True, initial: bool = True, online_labels: bool = True,
                 interval: int = 1) -> None:
        super().__init__(extractor, clustering, unif_sampling=False, reweight=False, init_memory=init_memory,
                         initial=initial, interval=interval)
        for name, value in (("centroids_update_interval", centroids_update_interval),
                            ("deal_with_small_clusters_interval", deal_with_small_clusters_interval),
                            ("evaluate_interval", evaluate_interval)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"InterCLRHook: {name} must be an integer >= 1, got {value!r}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"InterCLRHook: warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        self.centroids_update_interval = centroids_update_interval
        self.deal_with_small_clusters_interval = deal_with_small_clusters_interval
        self.evaluate_interval = evaluate_interval
        self.warmup_epochs = warmup_epochs
        self.online_labels = bool(online_labels)
        self.loss_weights: tuple[float, float] | None = None

    # -- checks ------------------------------------------------------------------------------
    def _check(self, runner: Any) -> None:
        model, n, k = runner.model, len(runner.dataset), self.kmeans.k
        memory = getattr(model, "memory_bank", None)
        if memory is None or not callable(getattr(memory, "assign_label", None)) \
                or not hasattr(model, "inter_loss_weight"):
            raise SelfSupError(f"InterCLRHook: the algorithm {type(model).__name__} has no InterCLRMemory "
                               "memory_bank; use model.type = 'InterCLRMoCo' or remove the InterCLRHook from [[hooks]]")
        if memory.length != n or memory.num_classes != k:
            raise SelfSupError(
                f"InterCLRHook: the memory bank holds {memory.length} samples and {memory.num_classes} clusters but "
                f"the training set has {n} samples and clustering.k = {k}; set model.memory_bank.length = {n} and "
                f"model.memory_bank.num_classes = model.num_classes = {k}")
        if bool(getattr(model, "online_labels", self.online_labels)) != self.online_labels:
            raise SelfSupError(f"InterCLRHook: online_labels = {str(self.online_labels).lower()} but "
                               f"model.online_labels = {str(model.online_labels).lower()}; make them equal")

    # -- lifecycle ----------------------------------------------------------------------------
    def selfsup_before_run(self, runner: Any) -> None:
        self._check(runner)
        model = runner.model
        self.loss_weights = (model.intra_loss_weight, model.inter_loss_weight)
        if bool(model.memory_bank.initialized):  # restored from a checkpoint
            return
        if not (self.initial and self.init_memory):
            raise SelfSupError("InterCLRHook: the memory bank must be filled before training; set initial = true and "
                               "init_memory = true (or resume from a checkpoint)")
        self.round(runner)

    def selfsup_before_epoch(self, runner: Any) -> None:
        if self.loss_weights is None:
            return
        model = runner.model
        if runner.epoch < self.warmup_epochs:
            model.intra_loss_weight, model.inter_loss_weight = 1.0, 0.0
        else:
            model.intra_loss_weight, model.inter_loss_weight = self.loss_weights

    def selfsup_after_iter(self, runner: Any, outputs: dict[str, Any]) -> None:
        if not self.online_labels:
            return
        memory = runner.model.memory_bank
        done = runner.iter + 1
        if done % self.centroids_update_interval == 0:
            memory.update_centroids_memory()
        if done % self.deal_with_small_clusters_interval == 0:
            memory.deal_with_small_clusters()
        if done % self.evaluate_interval == 0:
            runner.log_metrics({"mode": "clustering", **cluster_stats(memory.label_bank, memory.num_classes)})

    def selfsup_after_epoch(self, runner: Any) -> None:
        if self.online_labels or (runner.epoch + 1) % self.interval or runner.epoch + 1 >= runner.max_epochs:
            return
        self.round(runner, runner.epoch + 1)

    # -- one k-means round ----------------------------------------------------------------------
    def round(self, runner: Any, round_index: int = 0) -> None:
        """Extract, cluster (process 0, broadcast) and fill (first round) or relabel the memory."""
        features = self.extract(runner)
        labels = self.cluster(features, seed=self.kmeans.round_seed(int(runner.settings.seed), round_index))
        memory = runner.model.memory_bank
        if not bool(memory.initialized):
            memory.init_memory(features, labels)
        else:
            memory.assign_label(labels)
        stats = cluster_stats(labels, self.kmeans.k)
        runner.log_metrics({"mode": "clustering", **stats})
        runner.logger.message(f"InterCLRHook: {self.kmeans.k} clusters of {labels.numel()} samples, "
                              f"{stats['empty_clusters']} empty, sizes {stats['min_cluster']}-{stats['max_cluster']}")

    # -- checkpoints: the memory bank (model buffers) holds the labels -----------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


__all__ = ["InterCLRHook"]
