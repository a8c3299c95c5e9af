"""The DeepCluster trainer hook: extract, cluster, reassign labels, re-initialise the head.

Used by DeepCluster (every epoch) and by ODC (once, before the first epoch, to fill its
memory). One clustering round (:meth:`DeepClusterHook.deepcluster`):

1. features of the whole training set from a non-augmenting pass (the extraction pipeline),
   with the model in eval mode, every process extracting its shard (gathered in order);
2. k-means (:class:`~selfsup_clustering.kmeans.Kmeans`: PCA-whitening, L2 normalisation) on
   process 0, the labels broadcast to every process;
3. the labels written into the ``DeepClusterDataset`` (``assign_labels``);
4. optionally, sampling uniform over clusters for the next epoch (``unif_sampling``) and
   class weights inversely proportional to cluster size (``reweight``);
5. the classification head re-initialised (and broadcast from process 0);
6. optionally (ODC) the algorithm's memory filled with the features and labels.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Union

import torch
from selfsup_core.api import SeededSampler, SelfSupError, dist

from .extraction import extract_features
from .kmeans import Kmeans, cluster_stats

EXTRACTOR_KEYS = ("dataset", "pipeline", "samples_per_gpu", "workers_per_gpu")
CLUSTERING_KEYS = ("k", "pca_dim", "iterations", "seed", "seed_per_round", "init", "backend")


def uniform_indices(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``N`` sample indices drawn uniformly over the non-empty clusters (MMSelfSup's
    ``set_uniform_indices``).

    Every non-empty cluster contributes ``N // num_classes + 1`` samples: distinct ones when
    it has more samples than that, else drawn with replacement; the pool is shuffled and cut
    to ``N``. ``labels (N,)`` int64 on the CPU; the draw depends only on ``generator``.
    """
    n = labels.numel()
    per_cluster = n // num_classes + 1
    counts = torch.bincount(labels, minlength=num_classes)
    # members of each cluster, contiguous, in a random order within the cluster
    keys = torch.rand(n, generator=generator, dtype=torch.float64)
    members = torch.argsort(labels.double() + keys)
    starts = torch.cumsum(counts, 0) - counts
    present = torch.nonzero(counts).flatten()
    size = counts[present].unsqueeze(1)
    slot = torch.arange(per_cluster).unsqueeze(0).expand(present.numel(), per_cluster)
    with_replacement = (torch.rand(present.numel(), per_cluster, generator=generator, dtype=torch.float64)
                        * size).long()
    offset = torch.where(size > per_cluster, slot, with_replacement)
    pool = members[starts[present].unsqueeze(1) + offset].flatten()
    return pool[torch.randperm(pool.numel(), generator=generator)][:n]


class UniformClusterSampler(SeededSampler):
    """The trainer's :class:`SeededSampler` with each epoch's order drawn uniformly over the
    current clusters (:func:`uniform_indices`) instead of a permutation. The draw is seeded by
    ``(seed, epoch)`` like the permutation, so every process draws the same order and takes
    its strided share."""

    def __init__(self, base: SeededSampler, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(base.length, num_replicas=base.num_replicas, rank=base.rank, shuffle=True, seed=base.seed,
                         drop_last=base.drop_last)
        self.epoch, self.start = base.epoch, base.start
        self.labels = labels.detach().cpu().long()
        self.num_classes = num_classes

    def _permutation(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = uniform_indices(self.labels, self.num_classes, generator)
        seeds = torch.randint(0, 2**62, (self.total_size,), generator=generator)
        if self.total_size > self.length:
            order = order.repeat(math.ceil(self.total_size / self.length))
        return order[: self.total_size], seeds


def _check_keys(owner: str, name: str, table: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ValueError(f"{owner}: unknown key(s) {', '.join(unknown)} in {name}; it takes {', '.join(known)}")


def _built(runner: Any, value: Any, kind: str, key: str) -> Any:
    """``extractor.<key>`` built now (called when the run starts): component tables in
    ``value`` are constructed, objects pass through."""
    from selfsup_core.api import Builder

    config = getattr(runner, "config", None)
    builder = Builder(config) if config is not None else Builder()
    plan = builder.plan(value, kind, ("extractor", key))
    builder.raise_problems()
    return builder.construct(plan)


class DeepClusterHook:
    """Cluster the training set's features and reassign the pseudo-labels (MMSelfSup's
    ``DeepClusterHook``; see the module docstring for one round).

    ``extractor`` comes from the config unbuilt (``__selfsup_deferred_args__``): its
    ``dataset`` table is validated with the config but built (its data source opened) only
    when the run starts, so ``--check`` needs no data on disk.

    Args:
        extractor: the extraction pass: ``pipeline`` (transforms applied to the training
            set's data source, e.g. resize/centre-crop/normalise) or ``dataset`` (a whole
            dataset table with the training set's length and order), and
            ``samples_per_gpu`` (default 128), ``workers_per_gpu`` (default: the trainer's).
        clustering: ``k`` (number of clusters = the head's ``num_classes``), ``pca_dim``
            (256; -1: no PCA), ``iterations`` (20), ``seed`` (0), ``seed_per_round`` (true:
            each round's initial centroids come from a fresh seed drawn from the run's seed,
            ``seed`` and the round, as 0.x draws ``np.random.randint(1234)`` per round; false:
            ``seed`` every round), ``init`` ("k-means++" or
            "random"), ``backend`` ("auto": faiss
            when installed, else torch k-means on the device). MMSelfSup's
            ``dict(type='Kmeans', ...)`` without ``type``.
        unif_sampling: sample each epoch uniformly over the clusters.
        reweight: weight the cross-entropy by ``cluster size ** -reweight_pow``.
        reweight_pow: see ``reweight``.
        init_memory: fill the algorithm's ``memory_bank`` (ODC) with the features and labels.
        initial: cluster before the first epoch (needed unless labels come from a checkpoint).
        interval: cluster after every ``interval`` epochs (not after the last one, whose
            labels would never be used).

    Checkpoints hold the labels (``state_dict``), so a resumed run continues with the labels,
    sampling and class weights it had, without clustering again.
    """

    __selfsup_deferred_args__ = ("extractor",)

    def __init__(
        self,
        extractor: Union[Mapping[str, Any], None] = None,
        clustering: Union[Mapping[str, Any], None] = None,
        unif_sampling: bool = True,
        reweight: bool = False,
        reweight_pow: float = 0.5,
        init_memory: bool = False,
        initial: bool = True,
        interval: int = 1,
    ) -> None:
        owner = type(self).__name__
        extractor = dict(extractor or {})
        clustering = dict(clustering or {})
        _check_keys(owner, "extractor", extractor, EXTRACTOR_KEYS)
        _check_keys(owner, "clustering", clustering, CLUSTERING_KEYS)
        if ("dataset" in extractor) == ("pipeline" in extractor):
            raise ValueError(f"{owner}: extractor needs exactly one of 'pipeline' (transforms for the training set's "
                             "data source) and 'dataset' (a whole dataset table)")
        if "k" not in clustering:
            raise ValueError(f"{owner}: clustering.k (the number of clusters) is required")
        if interval < 1:
            raise ValueError(f"{owner}: interval must be >= 1, got {interval}")
        self.kmeans = Kmeans(**clustering)
        self.extractor = extractor
        self.samples_per_gpu = int(extractor.get("samples_per_gpu", 128))
        self.workers_per_gpu = extractor.get("workers_per_gpu")
        self.unif_sampling = bool(unif_sampling)
        self.reweight = bool(reweight)
        self.reweight_pow = float(reweight_pow)
        self.init_memory = bool(init_memory)
        self.initial = bool(initial)
        self.interval = int(interval)
        self.labels: torch.Tensor | None = None
        self._extract_dataset: Any = None

    # -- checks and set-up ----------------------------------------------------------------
    def _check(self, runner: Any) -> None:
        owner = type(self).__name__
        model, dataset = runner.model, runner.dataset
        if not callable(getattr(dataset, "assign_labels", None)):
            raise SelfSupError(f"{owner}: the training set {type(dataset).__name__} cannot take cluster labels; "
                               "use data.train.type = 'DeepClusterDataset'")
        if not callable(getattr(model, "clustering_features", None)):
            raise SelfSupError(f"{owner}: the algorithm {type(model).__name__} has no clustering_features(); "
                               "use it with DeepCluster or ODC")
        k, n = self.kmeans.k, len(dataset)
        if n < k:
            raise SelfSupError(f"{owner}: the training set has {n} samples, fewer than the {k} clusters of "
                               f"clustering.k; lower clustering.k (and the head's num_classes) to at most {n}, "
                               "or train on more samples")
        classes = getattr(model, "num_classes", k)
        if classes != k:
            raise SelfSupError(f"{owner}: clustering.k = {k} but the head classifies {classes} classes; "
                               "make model.head.num_classes equal clustering.k")
        memory = getattr(model, "memory_bank", None)
        if self.init_memory:
            if memory is None:
                raise SelfSupError(f"{owner}: init_memory = true but {type(model).__name__} has no memory_bank")
            if memory.length != n or memory.num_classes != k:
                raise SelfSupError(
                    f"{owner}: the memory bank holds {memory.length} samples and {memory.num_classes} clusters but the "
                    f"training set has {n} samples and clustering.k = {k}; set model.memory_bank.length = {n} and "
                    f"model.memory_bank.num_classes = {k}")

    def _extraction_dataset(self, runner: Any) -> Any:
        if self._extract_dataset is None:
            if "dataset" in self.extractor:
                dataset = _built(runner, self.extractor["dataset"], "datasets", "dataset")
            else:
                from selfsup_data.datasets.views import OneViewDataset

                source = getattr(runner.dataset, "data_source", None)
                if source is None:
                    raise SelfSupError(f"DeepClusterHook: the training set {type(runner.dataset).__name__} has no "
                                       "data_source; give extractor.dataset instead of extractor.pipeline")
                dataset = OneViewDataset(source, list(_built(runner, self.extractor["pipeline"], "transforms",
                                                             "pipeline")))
            if len(dataset) != len(runner.dataset):
                raise SelfSupError(f"DeepClusterHook: extractor.dataset has {len(dataset)} samples but the training "
                                   f"set has {len(runner.dataset)}; they must be the same images in the same order")
            self._extract_dataset = dataset
        return self._extract_dataset

    # -- lifecycle ----------------------------------------------------------------------------
    def selfsup_before_run(self, runner: Any) -> None:
        self._check(runner)
        if self.labels is not None:  # restored from a checkpoint
            self.labels = self.labels.to(runner.device)
            if self.labels.numel() != len(runner.dataset):
                raise SelfSupError(f"DeepClusterHook: the checkpoint's labels are for {self.labels.numel()} samples, "
                                   f"the training set has {len(runner.dataset)}")
            self._apply(runner, self.labels, features=None, fresh=False)
        elif self.initial:
            self.deepcluster(runner)

    def selfsup_after_epoch(self, runner: Any) -> None:
        if (runner.epoch + 1) % self.interval or runner.epoch + 1 >= runner.max_epochs:
            return
        self.deepcluster(runner)

    # -- one round ------------------------------------------------------------------------------
    def extract(self, runner: Any) -> torch.Tensor:
        """``(N, D)`` clustering features of the whole training set (same on every process)."""
        workers = self.workers_per_gpu if self.workers_per_gpu is not None else runner.settings.workers_per_gpu
        model = runner.model
        return extract_features(model, self._extraction_dataset(runner), model.clustering_features,
                                batch_size=self.samples_per_gpu, num_workers=int(workers), device=runner.device,
                                rank=runner.rank, world_size=runner.world_size, seed=int(runner.settings.seed),
                                autocast_dtype=runner.autocast_dtype, channels_last=bool(runner.channels_last))

    def cluster(self, features: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """k-means labels ``(N,)`` computed on process 0 and broadcast to every process;
        ``seed``: the initial centroids' seed (None: ``clustering.seed``)."""
        if dist.get_rank() == 0:
            labels = self.kmeans.cluster(features, seed=seed).to(device=features.device, dtype=torch.long)
        else:
            labels = torch.zeros(features.shape[0], dtype=torch.long, device=features.device)
        return dist.broadcast(labels.contiguous(), 0)

    def deepcluster(self, runner: Any) -> torch.Tensor:
        """One clustering round; returns the new labels."""
        features = self.extract(runner)
        # round 0 before the first epoch, round e + 1 after epoch e (0-based)
        round_index = runner.epoch if self.labels is None else runner.epoch + 1
        labels = self.cluster(features, seed=self.kmeans.round_seed(int(runner.settings.seed), round_index))
        self._apply(runner, labels, features=features, fresh=True)
        return labels

    def _apply(self, runner: Any, labels: torch.Tensor, features: torch.Tensor | None, fresh: bool) -> None:
        model = runner.model
        k = self.kmeans.k
        self.labels = labels
        runner.dataset.assign_labels(labels.cpu())
        if self.unif_sampling:
            runner.replace_sampler(UniformClusterSampler(runner.sampler, labels, k))
        if self.reweight:
            model.set_reweight(labels, self.reweight_pow)
        if fresh:
            head = model.head
            head.init_weights()
            for tensor in head.state_dict().values():
                dist.broadcast(tensor, 0)
            if self.init_memory:
                model.memory_bank.init_memory(features, labels)
            stats = cluster_stats(labels, k)
            runner.log_metrics({"mode": "clustering", **stats})
            runner.logger.message(f"{type(self).__name__}: {k} clusters of {labels.numel()} samples, "
                                  f"{stats['empty_clusters']} empty, sizes {stats['min_cluster']}-{stats['max_cluster']}")

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"labels": None if self.labels is None else self.labels.detach().cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        labels = state.get("labels")
        self.labels = None if labels is None else torch.as_tensor(labels).long()


__all__ = ["DeepClusterHook", "UniformClusterSampler", "uniform_indices"]
