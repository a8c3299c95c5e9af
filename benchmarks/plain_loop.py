"""A hand-written PyTorch SimCLR loop: the reference the selfsup trainer is timed against.

Self-contained on purpose (torch and torchvision only, no selfsup import): it does the work of
``simclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml`` the way a careful user would write it
by hand, so that ``selfsup / plain`` ratios measure the framework, not the recipe:

- the whole uint8 training set as one tensor on the device, batches drawn by index from a
  seeded permutation (no DataLoader);
- two views per image, batched on the device: RandomResizedCrop (torchvision's scale/ratio
  law per sample, ``affine_grid`` + ``grid_sample``), horizontal flip, brightness/contrast
  jitter (p 0.8), Gaussian blur (p 0.2), normalisation;
- ResNet-18 with the small-image stem (3x3 stride-1 conv, no max-pool) on 1 channel
  (``--width``: first-stage channels, 64 standard), or torchvision's ResNet-50 with its ImageNet stem (``--arch resnet50`` on synthetic RGB images);
  the projector Linear-BN-ReLU-Linear (512/2048 -> 2048 -> 128); NT-Xent (temperature 0.1);
- bf16 autocast on CUDA (``--precision``), channels_last, SGD or LARS (``--optim``), all
  parameter updates with multi-tensor kernels; ``--compile`` compiles the training step.

Timing: ``--warmup`` steps, then ``--steps`` steps between two device synchronisations.
Prints one JSON object: samples_per_s, s_per_epoch (for ``--epoch-samples``), flops_per_sample
(forward + backward of both views, counted by ``torch.utils.flop_counter``), device, torch.

    python benchmarks/plain_loop.py                                   # GPU: Fashion-MNIST, batch 256
    python benchmarks/plain_loop.py --compile
    python benchmarks/plain_loop.py --arch resnet50 --size 224 --synthetic 512
    python benchmarks/plain_loop.py --device cpu --batch 16 --steps 2 --warmup 1 --synthetic 64  # smoke
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

FASHION_MNIST = ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist")


def load_fashion_mnist(limit: int | None) -> torch.Tensor:
    """The training images as (N, 1, 28, 28) uint8 (IDX file read directly)."""
    for root in FASHION_MNIST:
        for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"):
            path = Path(root) / name
            if path.is_file():
                data = (gzip.open if name.endswith(".gz") else open)(path, "rb").read()
                images = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
                return torch.from_numpy(images[:limit].copy())
    raise SystemExit("Fashion-MNIST not found in data/fashion-mnist or /usr/share/datasets/fashion-mnist; "
                     "pass --synthetic N")


# -- batched augmentation ------------------------------------------------------------------------------------
def random_resized_crop(x: torch.Tensor, size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-sample crops with torchvision's sampling law (10 tries, central fallback), resized."""
    n, _, height, width = x.shape
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, 10, device=x.device))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(n, 10, device=x.device)
    w = torch.round(torch.sqrt(area * torch.exp(log_r)))
    h = torch.round(torch.sqrt(area / torch.exp(log_r)))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    pick = ok.to(torch.int8).argmax(1, keepdim=True)
    found = ok.any(1)
    w = torch.where(found, w.gather(1, pick).squeeze(1), torch.full_like(found, width, dtype=w.dtype))
    h = torch.where(found, h.gather(1, pick).squeeze(1), torch.full_like(found, height, dtype=h.dtype))
    u = torch.rand(n, 2, device=x.device)
    top, left = torch.floor(u[:, 0] * (height - h + 1)), torch.floor(u[:, 1] * (width - w + 1))
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = w / width, (2 * left + w) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / height, (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def blur(x: torch.Tensor, sigma: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (reflect padding)."""
    n, c = x.shape[:2]
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)
    y = F.pad(x.reshape(1, n * c, *x.shape[2:]), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, k, 1), groups=n * c)
    return y.view_as(x)


def augment(raw: torch.Tensor, size: int, mean: float, std: float) -> torch.Tensor:
    """One SimCLR view of uint8 images: crop, flip, jitter (p 0.8), blur (p 0.2), normalise."""
    x = raw.float().div_(255)
    x = random_resized_crop(x, size)
    n = x.shape[0]
    x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < 0.5, x.flip(-1), x)
    jitter = torch.rand(n, 1, 1, 1, device=x.device) < 0.8
    b = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, device=x.device)
    c = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, device=x.device)
    y = (x * b).clamp(0, 1)
    y = (c * y + (1 - c) * y.mean((1, 2, 3), keepdim=True)).clamp(0, 1)
    x = torch.where(jitter, y, x)
    sigma = 0.1 + 0.9 * torch.rand(n, device=x.device)
    x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < 0.2, blur(x, sigma), x)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


# -- model, loss, optimiser ----------------------------------------------------------------------------------
class Block(nn.Module):
    """ResNet's basic block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.down(x), inplace=True)


def small_resnet18(in_channels: int, width: int) -> nn.Module:
    """ResNet-18 with the small-image stem (3x3 stride-1 conv, no max-pool), ``width`` channels in
    the first stage (64: the standard network), global average pooling."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU(inplace=True)]
    cin = width
    for stage in range(4):
        cout = width * 2**stage
        layers += [Block(cin, cout, 1 if stage == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    net = nn.Sequential(*layers)
    net.out_features = cin
    return net


class SimCLR(nn.Module):
    def __init__(self, arch: str, in_channels: int, width: int = 64) -> None:
        super().__init__()
        if arch == "resnet18":
            net = small_resnet18(in_channels, width)
            feat = net.out_features
        else:
            net = torchvision.models.resnet50()
            feat = net.fc.in_features
            net.fc = nn.Identity()
        self.backbone = net
        self.projector = nn.Sequential(nn.Linear(feat, 2048), nn.BatchNorm1d(2048), nn.ReLU(inplace=True),
                                       nn.Linear(2048, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2N embeddings (views i and i + N are positives)."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, device=z.device, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


@torch.no_grad()
def lars_step(params: list[torch.Tensor], bufs: list[torch.Tensor], lr: float, wd: float = 1e-6,
              momentum: float = 0.9, eta: float = 0.001) -> None:
    """LARS with the lr inside the momentum buffer (SimCLR's), multi-tensor kernels."""
    grads = [p.grad for p in params]
    v = torch._foreach_add(grads, params, alpha=wd)
    w_norm = torch.stack(torch._foreach_norm(params))
    g_norm = torch.stack(torch._foreach_norm(grads))
    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / (g_norm + wd * w_norm + 1e-8),
                        torch.ones_like(w_norm))
    torch._foreach_mul_(v, list((trust * lr).unbind(0)))
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, v)
    torch._foreach_sub_(params, bufs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet50"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 first-stage channels (64: standard)")
    parser.add_argument("--size", type=int, default=28, help="crop size (px)")
    parser.add_argument("--synthetic", type=int, default=None,
                        help="N random images instead of Fashion-MNIST (RGB 256 px for resnet50, else 1x28x28)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N Fashion-MNIST images")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--epoch-samples", type=int, default=60000)
    parser.add_argument("--optim", default="lars", choices=["lars", "sgd"])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    if args.synthetic:
        shape = (3, 256, 256) if args.arch == "resnet50" else (1, 28, 28)
        images = torch.randint(0, 256, (args.synthetic, *shape), dtype=torch.uint8)
    else:
        images = load_fashion_mnist(args.limit)
    images = images.to(device)
    channels = images.shape[1]
    mean, std = (0.286, 0.353) if channels == 1 else (0.45, 0.225)
    model = SimCLR(args.arch, channels, args.width).to(device).to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optim == "sgd":
        optimizer = torch.optim.SGD(params, lr=0.3, momentum=0.9, weight_decay=1e-6, foreach=True)
    bufs = [torch.zeros_like(p) for p in params]
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def forward_backward(raw: torch.Tensor) -> torch.Tensor:
        x = torch.cat([augment(raw, args.size, mean, std), augment(raw, args.size, mean, std)])
        with autocast:
            loss = nt_xent(model(x), 0.1)
        loss.backward()
        return loss.detach()

    step_fn = torch.compile(forward_backward) if args.compile else forward_backward
    n = images.shape[0]
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(n, generator=generator).to(device)

    def step(i: int) -> torch.Tensor:
        lo = (i * args.batch) % max(n - args.batch + 1, 1)
        loss = step_fn(images.index_select(0, order[lo: lo + args.batch]))
        if args.optim == "sgd":
            optimizer.step()
        else:
            lars_step(params, bufs, 0.3)
        for p in params:
            p.grad = None
        return loss

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        forward_backward(images[: args.batch])
    for p in params:
        p.grad = None
    flops_per_sample = counter.get_total_flops() / args.batch
    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    loss = torch.zeros((), device=device)
    for i in range(args.steps):
        loss = step(args.warmup + i)
    final_loss = float(loss)  # synchronises
    seconds = time.perf_counter() - start
    samples_per_s = args.steps * args.batch / seconds
    result = {
        "samples_per_s": round(samples_per_s, 1),
        "s_per_epoch": round(args.epoch_samples / samples_per_s, 3),
        "flops_per_sample": flops_per_sample,
        "batch": args.batch, "steps": args.steps, "arch": args.arch, "size": args.size,
        "compile": args.compile, "optim": args.optim, "precision": "bf16" if bf16 else "fp32",
        "loss": round(final_loss, 4),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
