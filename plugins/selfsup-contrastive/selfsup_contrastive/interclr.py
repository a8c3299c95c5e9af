"""InterCLR (MoCo-InterCLR): intra-image plus inter-image invariance learning.

Xie, Zhan, Liu, Ong and Loy, "Delving into Inter-Image Invariance for Unsupervised Visual
Representations", IJCV 2022; MMSelfSup 0.x ``InterCLRMoCo``.

Every step combines two InfoNCE losses (``ContrastiveHead``, temperature ``T``):

- intra-image (MoCo v2): the query ``q`` of one view against its key ``k`` (the momentum
  encoder's embedding of the other view) and the ``queue_len`` queued keys;
- inter-image: the query (of the inter neck, ``share_neck = false``) against a memory-bank
  entry of its own cluster (positive) and ``neg_num`` entries of other clusters (negatives,
  chosen by ``neg_sampling``, see :mod:`selfsup_contrastive.interclr_sampling`).

A positive logit may get a margin first: ``cos``: ``p - margin`` (0.x config: inter-image
``margin = -0.5``, i.e. ``p + 0.5``); ``arc``: ``cos(acos(p) + margin)`` with 0.x's fallback
outside the monotonic range. The losses are weighted, ``intra_loss = intra_loss_weight *
L_intra`` and ``inter_loss = inter_loss_weight * L_inter`` (0.x: 0.75 and 0.25), and summed by
the trainer. After the step the keys enter the queue and the memory bank (``InterCLRMemory``):
with ``online_labels`` the batch's samples are relabelled to their nearest centroid
(``change_ratio`` is logged), otherwise the bank is updated without relabelling and the labels
come from the ``InterCLRHook``'s k-means every ``interval`` epochs.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from selfsup_core.api import dist
from selfsup_models.algorithm import InitCfg, at_least_float32, check_views, make_momentum_copy, momentum_update_
from selfsup_models.init import InitReport
from torch import nn

from .interclr_sampling import NEG_SAMPLINGS, sample_negatives, sample_positives
from .moco import MoCo, _shuffle_across_processes, _unshuffle_across_processes, moco_logits


def cos_margin(pos: torch.Tensor, margin: float) -> torch.Tensor:
    """The cosine margin of 0.x: ``pos - margin``."""
    return pos - margin


def arc_margin(pos: torch.Tensor, margin: float) -> torch.Tensor:
    """The additive angular margin of 0.x: ``cos(theta + m) = c cos m - sin(theta) sin m`` for
    ``c = cos(theta)``, where that is monotonic in ``theta``; elsewhere 0.x's linear
    continuation (``m < 0``: ``c + m sin m`` where ``c >= cos m``; ``m >= 0``: ``c - m sin(pi -
    m)`` where ``c <= cos(pi - m)``)."""
    sine = torch.sqrt((1.0 - pos * pos).clamp(0, 1))
    phi = pos * math.cos(margin) - sine * math.sin(margin)
    if margin < 0:
        return torch.where(pos < math.cos(margin), phi, pos + math.sin(margin) * margin)
    return torch.where(pos > math.cos(math.pi - margin), phi, pos - math.sin(math.pi - margin) * margin)


def apply_margins(pos: torch.Tensor, cos: bool, cos_m: float, arc: bool, arc_m: float) -> torch.Tensor:
    """``pos`` with the cosine margin (if ``cos``) then the arc margin (if ``arc``), as 0.x."""
    if cos:
        pos = cos_margin(pos, cos_m)
    if arc:
        pos = arc_margin(pos, arc_m)
    return pos


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with newly drawn weights (0.x builds the inter-image neck from the
    same config as a second module): PyTorch's ``reset_parameters`` of every layer, then the
    component's own ``init_weights`` (its default initialisation and ``init_cfg``)."""
    fresh = copy.deepcopy(module)
    for layer in fresh.modules():
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()
    init = getattr(fresh, "init_weights", None)
    if callable(init):
        init()
    return fresh


def _check_int(owner: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


class InterCLRMoCo(MoCo):
    """MoCo-InterCLR (MMSelfSup 0.x ``InterCLRMoCo``; argument names as 0.x, typos included).

    Args:
        backbone, neck, head, queue_len, feat_dim, momentum, bn_splits: as :class:`MoCo`
            (0.x: ResNet-50, ``MoCoV2Neck`` 2048-2048-128, ``ContrastiveHead`` T = 0.2, 65536
            keys, momentum 0.999).
        memory_bank: an ``InterCLRMemory`` (``length`` = training images, ``feat_dim`` = the
            neck's ``out_channels``, ``num_classes`` clusters).
        online_labels: relabel the batch's bank entries every step (true, 0.x) or keep the
            labels of the hook's last k-means round.
        neg_num: inter-image negatives per query (0.x: 16384; at most the bank's length).
        neg_sampling: ``"semihard"`` (0.x), ``"semieasy"``, ``"random"`` or ``"hard"``.
        semihard_neg_pool_num, semieasy_neg_pool_num: size of the pool of most / least similar
            bank entries the semi-hard / semi-easy negatives are drawn from (0.x: 128000; at
            least ``neg_num``, at most the bank's length).
        intra_cos_marign_loss, intra_cos_margin, intra_arc_marign_loss, intra_arc_margin,
        inter_cos_marign_loss, inter_cos_margin, inter_arc_marign_loss, inter_arc_margin:
            margins on the intra- / inter-image positive logit (0.x config: only the
            inter-image cosine margin, -0.5).
        intra_loss_weight, inter_loss_weight: loss weights (0.75 / 0.25); the
            ``InterCLRHook``'s ``warmup_epochs`` sets them to 1 / 0 for the first epochs.
        share_neck: one neck for both branches (true, 0.x) or a second ``inter_neck_q`` (a
            copy of ``neck``, re-initialised) with its momentum copy ``inter_neck_k``.
        num_classes: number of clusters; must equal ``memory_bank.num_classes``.
        init_cfg: as :class:`MoCo`.

    ``forward_train(img=[view_q, view_k], idx) -> {"intra_loss", "inter_loss"[, "change_ratio"]}``.
    """

    __selfsup_arg_kinds__ = {"memory_bank": "memories"}

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, queue_len: int = 65536,
                 feat_dim: int = 128, momentum: float = 0.999, memory_bank: nn.Module | None = None,
                 online_labels: bool = True, neg_num: int = 16384, neg_sampling: str = "semihard",
                 semihard_neg_pool_num: int = 128000, semieasy_neg_pool_num: int = 128000,
                 intra_cos_marign_loss: bool = False, intra_cos_margin: float = 0.0,
                 intra_arc_marign_loss: bool = False, intra_arc_margin: float = 0.0,
                 inter_cos_marign_loss: bool = True, inter_cos_margin: float = -0.5,
                 inter_arc_marign_loss: bool = False, inter_arc_margin: float = 0.0,
                 intra_loss_weight: float = 0.75, inter_loss_weight: float = 0.25, share_neck: bool = True,
                 num_classes: int = 10000, bn_splits: int = 1, init_cfg: InitCfg = None) -> None:
        owner = "InterCLRMoCo"
        bank = getattr(memory_bank, "feature_bank", None)
        if memory_bank is None or not isinstance(bank, torch.Tensor) or not hasattr(memory_bank, "label_bank"):
            raise ValueError(f"{owner}: memory_bank must be an InterCLRMemory, got {type(memory_bank).__name__}")
        length = bank.size(0)
        if neg_sampling not in NEG_SAMPLINGS:
            raise ValueError(f"{owner}: neg_sampling must be one of {', '.join(map(repr, NEG_SAMPLINGS))}, "
                             f"got {neg_sampling!r}")
        _check_int(owner, "neg_num", neg_num, 1)
        if neg_num > length:
            raise ValueError(f"{owner}: neg_num = {neg_num} is larger than the memory bank (memory_bank.length = "
                             f"{length}); lower neg_num")
        pool_key = {"semihard": "semihard_neg_pool_num", "semieasy": "semieasy_neg_pool_num"}.get(neg_sampling)
        pool_num = semihard_neg_pool_num if neg_sampling == "semihard" else semieasy_neg_pool_num
        if pool_key is not None:
            _check_int(owner, pool_key, pool_num, 1)
            if not neg_num <= pool_num <= length:
                raise ValueError(f"{owner}: {pool_key} = {pool_num} must be between neg_num = {neg_num} and the "
                                 f"memory bank's length = {length}")
        _check_int(owner, "num_classes", num_classes, 2)
        if getattr(memory_bank, "num_classes", None) != num_classes:
            raise ValueError(f"{owner}: num_classes = {num_classes} but memory_bank.num_classes = "
                             f"{getattr(memory_bank, 'num_classes', None)}; make them equal")
        if bank.size(1) != feat_dim:
            raise ValueError(f"{owner}: memory_bank.feat_dim = {bank.size(1)} but feat_dim = {feat_dim}; make them "
                             "equal (the neck's out_channels)")
        for key, value in (("intra_loss_weight", intra_loss_weight), ("inter_loss_weight", inter_loss_weight)):
            if not value >= 0:
                raise ValueError(f"{owner}: {key} must be >= 0, got {value}")
        super().__init__(backbone, neck, head, queue_len=queue_len, feat_dim=feat_dim, momentum=momentum,
                         bn_splits=bn_splits, init_cfg=init_cfg)
        self.memory_bank = memory_bank
        self.online_labels = bool(online_labels)
        self.neg_num = int(neg_num)
        self.neg_sampling = neg_sampling
        self.semihard_neg_pool_num = int(semihard_neg_pool_num)
        self.semieasy_neg_pool_num = int(semieasy_neg_pool_num)
        self.pool_num = int(pool_num)
        self.intra_margins = (bool(intra_cos_marign_loss), float(intra_cos_margin), bool(intra_arc_marign_loss),
                              float(intra_arc_margin))
        self.inter_margins = (bool(inter_cos_marign_loss), float(inter_cos_margin), bool(inter_arc_marign_loss),
                              float(inter_arc_margin))
        self.intra_loss_weight = float(intra_loss_weight)
        self.inter_loss_weight = float(inter_loss_weight)
        self.share_neck = bool(share_neck)
        self.num_classes = int(num_classes)
        if not self.share_neck:
            self.inter_neck_q = _fresh_copy(neck)
            self.inter_neck_k = make_momentum_copy(self.inter_neck_q)
        # The bank's replicas are kept equal by the memory itself (see ODC).
        ignore = getattr(nn.parallel.DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
        if ignore is not None:
            ignore(self, [f"memory_bank.{name}" for name, _ in memory_bank.named_buffers()])

    def init_weights(self) -> InitReport:
        report = super().init_weights()
        if "inter_neck_k" in self._modules:
            with torch.no_grad():
                for key, query in zip(self.inter_neck_k.parameters(), self.inter_neck_q.parameters()):
                    key.copy_(query)
        return report

    @torch.no_grad()
    def momentum_update_key_encoder(self) -> None:
        """EMA of the key encoder (and of the inter-image key neck without ``share_neck``)."""
        super().momentum_update_key_encoder()
        if not self.share_neck:
            momentum_update_(self.inter_neck_k, self.inter_neck_q, self.momentum)

    def _key_outputs(self, im_k: torch.Tensor) -> torch.Tensor:
        """The key encoder's neck output(s), concatenated along the channels (intra, then inter)."""
        feats = self.encoder_k[0](im_k)
        out = self.encoder_k[1](feats)[0]
        if not self.share_neck:
            out = torch.cat([out, self.inter_neck_k(feats)[0]], dim=1)
        return out

    @torch.no_grad()
    def encode_keys_both(self, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm intra-image keys and inter-image keys (the same tensor with ``share_neck``),
        with shuffling BN (or split BN on one process) as :meth:`MoCo.encode_keys`."""
        if dist.is_distributed():
            shuffled, order = _shuffle_across_processes(im_k)
            out = _unshuffle_across_processes(self._key_outputs(shuffled), order)
        elif self.bn_splits == 1:
            out = self._key_outputs(im_k)
        else:
            perm = torch.randperm(im_k.size(0), device=im_k.device)
            shuffled = torch.cat([self._key_outputs(chunk) for chunk in im_k[perm].chunk(self.bn_splits)])
            out = torch.empty_like(shuffled)
            out[perm] = shuffled
        if self.share_neck:
            k = F.normalize(out, dim=1)
            return k, k
        return F.normalize(out[:, : self.feat_dim], dim=1), F.normalize(out[:, self.feat_dim:], dim=1)

    def clustering_features(self, img: torch.Tensor) -> torch.Tensor:
        """``(N, feat_dim)`` features clustered by the ``InterCLRHook`` (0.x's extractor: the
        query encoder's neck output; the inter-image neck's without ``share_neck``, the space
        the memory bank holds)."""
        feats = self.backbone(img)
        neck = self.neck if self.share_neck else self.inter_neck_q
        return neck(feats)[0]

    def inter_logits(self, q: torch.Tensor, idx: torch.Tensor,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``pos (N, 1)`` and ``neg (N, neg_num)`` inter-image logits of unit-norm queries ``q``
        of the samples ``idx``: similarities with one bank entry of the sample's cluster and
        with ``neg_num`` entries of other clusters (``neg_sampling``), before margins; float32."""
        memory = self.memory_bank
        bank, labels = memory.feature_bank, memory.label_bank
        with torch.autocast(device_type=q.device.type, enabled=False):
            q = at_least_float32(q).to(bank.dtype)
            pos_label = labels[idx]
            pos_idx = sample_positives(labels, pos_label, self.num_classes, generator)
            similarity = None if self.neg_sampling == "random" else q.detach() @ bank.t()
            neg_idx = sample_negatives(self.neg_sampling, similarity, labels, pos_label, self.neg_num,
                                       self.num_classes, self.pool_num, generator)
            pos = (bank[pos_idx] * q).sum(dim=1, keepdim=True)
            neg = torch.bmm(bank[neg_idx], q.unsqueeze(2)).squeeze(2)
        return pos, neg

    def forward_train(self, img: Any, idx: torch.Tensor | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        im_q, im_k = check_views("InterCLRMoCo", img, 2)
        if idx is None:
            raise ValueError("InterCLRMoCo: the batch has no idx (sample indices); use a selfsup-data dataset")
        memory = self.memory_bank
        if not bool(memory.initialized):
            raise RuntimeError("InterCLRMoCo: the memory bank is not initialised; add an InterCLRHook with "
                               "init_memory = true and initial = true to [[hooks]]")
        idx = torch.as_tensor(idx).to(device=memory.label_bank.device, dtype=torch.long).view(-1)
        q_b = self.backbone(im_q)
        q = F.normalize(self.neck(q_b)[0], dim=1)
        q2 = q if self.share_neck else F.normalize(self.inter_neck_q(q_b)[0], dim=1)
        self.momentum_update_key_encoder()
        k, k2 = self.encode_keys_both(im_k)

        pos, neg = moco_logits(q, k, self.queue.clone())
        intra = self.head(apply_margins(pos, *self.intra_margins), neg)["loss"]
        pos, neg = self.inter_logits(q2, idx)
        inter = self.head(apply_margins(pos, *self.inter_margins), neg)["loss"]
        losses = {"intra_loss": self.intra_loss_weight * intra, "inter_loss": self.inter_loss_weight * inter}

        self.dequeue_and_enqueue(k)
        if self.online_labels:
            losses["change_ratio"] = memory.update_samples_memory(idx, k2)
        else:
            memory.update_simple_memory(idx, k2)
        return losses


__all__ = ["InterCLRMoCo", "apply_margins", "arc_margin", "cos_margin"]
