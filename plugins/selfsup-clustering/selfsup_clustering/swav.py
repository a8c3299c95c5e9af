"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of Sinkhorn codes across multi-crops.

The algorithm runs the backbone once per resolution group of the multi-crop batch, the
``SwAVNeck`` projects (and L2-normalises) all crops together and the ``SwAVHead`` scores
them against its prototypes, computes equipartitioned codes with Sinkhorn-Knopp over the
batch of every process and returns the swapped-prediction loss (selfsup-models).

:class:`SwAVHook` owns what lives outside one iteration: the feature queue (started at
``epoch_queue_starts``, one per process, saved in checkpoints) and freezing the prototypes
for the first iterations (``frozen_layers_cfg``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from selfsup_core.api import SelfSupError, dist
from selfsup_models.algorithm import BaseAlgorithm, check_views, resolution_groups
from torch import nn

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


class SwAV(BaseAlgorithm):
    """SwAV: multi-crop views -> backbone (once per resolution) -> ``SwAVNeck`` -> ``SwAVHead``.

    Args:
        backbone: the backbone (e.g. ResNet-50 with ``out_indices = [4]``).
        neck: a ``SwAVNeck`` (projection to ``feat_dim`` and L2 normalisation).
        head: a ``SwAVHead`` (prototypes, Sinkhorn codes, swapped-prediction loss); its
            ``num_crops`` must add up to the dataset's views (``MultiViewDataset`` with
            ``num_views = [2, 6]`` -> ``num_crops = [2, 6]``).
        init_cfg: initialisation of the whole algorithm after the components' own.

    ``forward_train(img: list of sum(num_crops) view batches) -> {"loss"}``.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        self.init_weights()

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        views = check_views(type(self).__name__, img, at_least=2)
        total = getattr(self.head, "total_crops", len(views))
        if len(views) != total:
            raise ValueError(
                f"SwAV: the batch has {len(views)} views but head.num_crops = {getattr(self.head, 'num_crops', '?')} "
                f"adds up to {total}; make model.head.num_crops equal data.train.num_views")
        outputs = [self.backbone(torch.cat(views[start:end])) for start, end in resolution_groups(views)]
        embedding = self.neck(outputs)[0]
        return self.head(embedding)


class SwAVHook:
    """Trainer hook of SwAV: the feature queue and frozen prototypes (MMSelfSup's ``SwAVHook``).

    Queue: from epoch ``epoch_queue_starts`` (0-based) on, every process keeps a queue of
    ``queue_length // world_size`` earlier embeddings per assigned crop, shape
    ``(len(crops_for_assign), queue_length // world_size, feat_dim)``, which the head scores
    with the batch before Sinkhorn once it is full. ``queue_length`` is first rounded down
    to a multiple of ``batch_size * world_size``. ``head.use_queue`` is reset at every epoch
    start, as in SwAV. The queues of all processes are saved in checkpoints (``state_dict``)
    and restored on resume; a resume with another number of processes re-splits them.

    Frozen layers: ``frozen_layers_cfg = {prototypes = 5005}`` keeps the parameters whose
    name contains ``prototypes`` unchanged for the first 5005 iterations. The trainer's
    ``selfsup_after_backward`` step hook sets their (reduced) gradient to zeros before
    clipping and the optimizer step; weight decay then only rescales the prototypes, which
    the head L2-normalises at every forward, so their directions do not move.

    Args:
        batch_size: images per process (default: ``data.samples_per_gpu``).
        epoch_queue_starts: first epoch (0-based) that uses the queue.
        crops_for_assign: crops whose codes are computed (default: the head's).
        feat_dim: embedding dimension (default: the head's prototypes' input size).
        queue_length: total queue length over all processes; 0 disables the queue.
        frozen_layers_cfg: ``{name substring: iterations}`` of parameters to keep frozen.
    """

    def __init__(
        self,
        batch_size: Union[int, None] = None,
        epoch_queue_starts: int = 15,
        crops_for_assign: Union[Sequence[int], None] = None,
        feat_dim: Union[int, None] = None,
        queue_length: int = 0,
        frozen_layers_cfg: Union[Mapping[str, int], None] = None,
    ) -> None:
        if queue_length < 0:
            raise ValueError(f"SwAVHook: queue_length must be >= 0, got {queue_length}")
        if epoch_queue_starts < 0:
            raise ValueError(f"SwAVHook: epoch_queue_starts must be >= 0, got {epoch_queue_starts}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"SwAVHook: batch_size must be >= 1, got {batch_size}")
        frozen = dict(frozen_layers_cfg or {})
        bad = {k: v for k, v in frozen.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"SwAVHook: frozen_layers_cfg maps parameter-name parts to iteration counts >= 0, got {bad}")
        self.batch_size = batch_size
        self.epoch_queue_starts = int(epoch_queue_starts)
        self.crops_for_assign = None if crops_for_assign is None else [int(c) for c in crops_for_assign]
        self.feat_dim = feat_dim
        self.requested_queue_length = int(queue_length)
        self.queue_length = int(queue_length)
        self.frozen_layers_cfg = frozen
        self.queue: torch.Tensor | None = None
        self._loaded: dict[str, Any] | None = None
        self._frozen_params: dict[str, list[nn.Parameter]] = {}
        self._head: nn.Module | None = None

    # -- set-up -------------------------------------------------------------------------------
    def _swav_head(self, runner: Any) -> nn.Module:
        head = getattr(runner.model, "head", None)
        if head is None or not hasattr(head, "queue") or not hasattr(head, "crops_for_assign"):
            raise SelfSupError(
                f"SwAVHook: the algorithm {type(runner.model).__name__} has no SwAVHead (head.queue); "
                "remove the SwAVHook from [[hooks]] or use model.head.type = 'SwAVHead'")
        return head

    def selfsup_before_run(self, runner: Any) -> None:
        head = self._head = self._swav_head(runner)
        if self.crops_for_assign is None:
            self.crops_for_assign = list(head.crops_for_assign)
        elif self.crops_for_assign != list(head.crops_for_assign):
            raise SelfSupError(f"SwAVHook: crops_for_assign {self.crops_for_assign} differs from the head's "
                               f"{list(head.crops_for_assign)}; leave it out of the hook or make them equal")
        weight = head.prototypes.weight
        if self.feat_dim is None:
            self.feat_dim = int(weight.shape[1])
        elif self.feat_dim != weight.shape[1]:
            raise SelfSupError(f"SwAVHook: feat_dim = {self.feat_dim} but the head's prototypes take "
                               f"{weight.shape[1]}-d embeddings; leave feat_dim out or make them equal")
        batch = self.batch_size or int(runner.settings.samples_per_gpu)
        world = int(runner.world_size)
        self.queue_length = self.requested_queue_length - self.requested_queue_length % (batch * world)
        if self.requested_queue_length and not self.queue_length:
            raise SelfSupError(
                f"SwAVHook: queue_length = {self.requested_queue_length} is shorter than one global batch "
                f"({batch} x {world} processes); raise queue_length or set it to 0 (no queue)")
        if self._loaded is not None:
            self.queue = self._restore_queue(self._loaded, runner)
            head.use_queue = bool(self._loaded.get("use_queue", False))
            self._loaded = None
        head.queue = self.queue
        self._freeze(runner)

    def _freeze(self, runner: Any) -> None:
        """Find the parameters ``frozen_layers_cfg`` names (once, before the run)."""
        self._frozen_params = {}
        for key in self.frozen_layers_cfg:
            params = [p for n, p in runner.model.named_parameters() if key in n and p.requires_grad]
            if not params:
                raise SelfSupError(f"SwAVHook: frozen_layers_cfg names {key!r} but no trainable parameter's name "
                                   "contains it (the head's is 'head.prototypes.weight')")
            self._frozen_params[key] = params

    def selfsup_after_backward(self, runner: Any) -> None:
        """Zero the gradients of the layers still frozen at this iteration (the step hook of
        the trainer: after the backward pass and the cross-process reduction, before
        gradient clipping and the optimizer step)."""
        for key, iters in self.frozen_layers_cfg.items():
            if runner.iter < iters:
                for param in self._frozen_params.get(key, ()):
                    if param.grad is not None:
                        param.grad.zero_()

    # -- lifecycle ----------------------------------------------------------------------------
    def selfsup_before_epoch(self, runner: Any) -> None:
        head = self._head if self._head is not None else self._swav_head(runner)
        if self.queue_length > 0 and runner.epoch >= self.epoch_queue_starts and self.queue is None:
            self.queue = torch.zeros(len(self.crops_for_assign or ()), self.queue_length // runner.world_size,
                                     int(self.feat_dim or 0), device=runner.device)
        head.queue = self.queue
        head.use_queue = False

    def selfsup_after_epoch(self, runner: Any) -> None:
        head = self._head if self._head is not None else self._swav_head(runner)
        self.queue = head.queue

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"queue": (world_size, crops, length // world_size, feat_dim) or None, "use_queue"}``.

        Collective under torch.distributed: every process's queue is gathered."""
        if self._head is not None:
            self.queue = self._head.queue
        use_queue = bool(getattr(self._head, "use_queue", False))
        if self.queue is None:
            return {"queue": None, "use_queue": use_queue}
        gathered = dist.all_gather(self.queue.detach().unsqueeze(0).contiguous())
        return {"queue": gathered.cpu(), "use_queue": use_queue}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._loaded = dict(state)

    def _restore_queue(self, state: Mapping[str, Any], runner: Any) -> torch.Tensor | None:
        saved = state.get("queue")
        if saved is None:
            return None
        world, rank = int(runner.world_size), int(runner.rank)
        if saved.shape[0] == world and saved.shape[2] * world == self.queue_length:
            return saved[rank].to(runner.device).clone()
        # another number of processes (or queue length): pool every process's rows, re-split
        crops, dim = saved.shape[1], saved.shape[3]
        pooled = saved.permute(1, 0, 2, 3).reshape(crops, -1, dim)
        per_rank = self.queue_length // world
        queue = torch.zeros(crops, per_rank, dim)
        rows = pooled[:, rank * per_rank : (rank + 1) * per_rank]
        queue[:, : rows.shape[1]] = rows
        return queue.to(runner.device)


__all__ = ["SwAV", "SwAVHook"]
