"""torch.distributed helpers that degrade to single-process no-ops.

Every function works whether or not a process group is initialised, so a component written
against these (a memory bank, a contrastive loss, SyncBN) runs unchanged on a CPU, one GPU,
or many GPUs under ``torchrun``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, local rank on its node, and the world size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def get_rank() -> int:
    return torch_dist.get_rank() if torch_dist.is_available() and torch_dist.is_initialized() else 0


def get_world_size() -> int:
    return torch_dist.get_world_size() if torch_dist.is_available() and torch_dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """True when the environment carries torchrun's (or any env:// launcher's) variables."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(device_type: str) -> DistInfo:
    """Initialise the default process group from torchrun's environment, if present.

    Uses nccl for CUDA devices and gloo otherwise. Without torchrun's variables (or with a
    world size of 1) nothing is initialised and rank 0 of 1 is returned. Works for single and
    multi node launches: ``RANK``/``WORLD_SIZE`` are global, ``LOCAL_RANK`` picks the GPU.
    """
    if not launched_by_torchrun():
        return DistInfo()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if world_size > 1 and not torch_dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        torch_dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)


def destroy(wait: bool = False) -> None:
    """Leave the process group, if one is set up.

    ``wait=True`` first waits for every process (a barrier), for a normal end: otherwise
    process 0 can exit and take the rendezvous store with it while another process is still
    tearing its group down, which aborts that one ("terminate called without an active
    exception"). Leave ``wait`` false after an error, where the others may never arrive.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        try:
            if wait:
                torch_dist.barrier()
        finally:
            torch_dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


@torch.no_grad()
def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, rank order, without gradients.

    All processes must pass tensors of the same shape. Returns ``tensor`` itself when not
    distributed.
    """
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    torch_dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_in_dataset_order(local: torch.Tensor, length: int) -> torch.Tensor:
    """The rows of a strided, sharded pass over a dataset of ``length`` samples, gathered from
    every process and put back in dataset order.

    ``local`` holds this process's rows: rank ``r`` of ``W`` took positions ``r, r + W, ...``,
    every rank the same number of rows (the last shards padded by repeating samples, as the
    non-shuffling ``SeededSampler`` does). Returns ``(length, ...)``, the same on every process
    and equal to what one process would compute; ``local[:length]`` when not distributed.
    """
    world_size = get_world_size() if is_distributed() else 1
    if world_size == 1:
        return local[:length]
    gathered = all_gather(local.contiguous())  # rank-major: rank r's row i is dataset position i * W + r
    rest = local.shape[1:]
    return gathered.reshape(world_size, local.shape[0], *rest).transpose(0, 1).reshape(-1, *rest)[:length]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each process the gradient of its own slice, summed over
    processes (every process computes a loss over the gathered tensor; DDP then averages)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
        torch_dist.all_gather(parts, tensor.contiguous())
        ctx.rank = get_rank()
        ctx.size = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        torch_dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping the autograd graph for
    this process's slice (negatives for contrastive losses). Identity when not distributed."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce with ``op`` in ``sum``, ``mean``, ``max``, ``min``; returns the tensor."""
    if not is_distributed():
        return tensor
    if op == "mean":
        torch_dist.all_reduce(tensor)
        tensor /= get_world_size()
        return tensor
    ops = {"sum": torch_dist.ReduceOp.SUM, "max": torch_dist.ReduceOp.MAX, "min": torch_dist.ReduceOp.MIN}
    torch_dist.all_reduce(tensor, op=ops[op])
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src``; returns the tensor."""
    if is_distributed():
        torch_dist.broadcast(tensor, src)
    return tensor


def broadcast_object(obj: object, src: int = 0) -> object:
    """A picklable object from ``src`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src)
    return box[0]
