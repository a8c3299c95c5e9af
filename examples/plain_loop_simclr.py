"""SimCLR on Fashion-MNIST in a plain PyTorch loop, built from selfsup's library pieces.

    python examples/plain_loop_simclr.py [--epochs 3] [--samples 6000]

No config and no trainer: ``selfsup_data.presets.SimCLRTransform`` makes the two views,
``selfsup_models.build_backbone``/``build_neck`` build the quick start's ResNet-18 (width 16,
1-channel small stem) and projector, ``selfsup_contrastive.losses.NTXentLoss`` is the loss and
``selfsup_eval.functional.knn_top1`` scores the features. ``train_simclr`` is the loop; the test
suite runs it against ``selfsup-run`` on the same data and checks the loss curves agree.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
from selfsup_contrastive.losses import NTXentLoss
from selfsup_models import build_backbone, build_neck


def build_model(width: int = 16, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The quick start's backbone and projector, initialised from ``seed``."""
    torch.manual_seed(seed)
    backbone = build_backbone("ResNet", depth=18, in_channels=1, stem_type="cifar", out_indices=[4],
                              base_channels=width, stem_channels=width)
    neck = build_neck("NonLinearNeck", in_channels=8 * width, hid_channels=2048, out_channels=128,
                      num_layers=2, with_avg_pool=True)
    return backbone, neck


def train_simclr(images: torch.Tensor, transform: Callable[[torch.Tensor], Sequence[torch.Tensor]], *,
                 epochs: int, batch_size: int, lr: float = 0.1, temperature: float = 0.1, width: int = 16,
                 seed: int = 0, order: Callable[[int], Sequence[int]] | None = None) -> tuple[torch.nn.Module, list[float]]:
    """Train on ``images`` (uint8, ``(N, 1, H, W)``); returns the backbone and the loss of every
    iteration. ``order(epoch)``: the epoch's sample order (default: a permutation seeded by ``seed``)."""
    backbone, neck = build_model(width, seed)
    generator = torch.Generator().manual_seed(seed)
    order = order or (lambda epoch: torch.randperm(len(images), generator=generator).tolist())
    params = [*backbone.parameters(), *neck.parameters()]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    criterion = NTXentLoss(temperature)
    losses = []
    for epoch in range(epochs):
        indices = list(order(epoch))
        for start in range(0, len(indices) - batch_size + 1, batch_size):
            pairs = [transform(images[i]) for i in indices[start:start + batch_size]]
            view_1 = torch.stack([p[0] for p in pairs])
            view_2 = torch.stack([p[1] for p in pairs])
            z = neck(backbone(torch.cat((view_1, view_2))))[0]
            loss = criterion(*z.chunk(2))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return backbone, losses


@torch.no_grad()
def features(backbone: torch.nn.Module, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Average-pooled last-stage features of uint8 ``images``, in eval mode."""
    backbone.eval()
    return torch.cat([backbone(normalize(chunk))[-1].mean(dim=(2, 3)) for chunk in images.split(512)])


def main(argv: Sequence[str] | None = None) -> None:
    from selfsup_data.presets import SimCLRTransform
    from selfsup_data.sources.mnist import FashionMNIST
    from selfsup_eval.functional import knn_top1

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=6000, help="training images used (of 60,000)")
    args = parser.parse_args(argv)
    train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    x_train = torch.tensor(train.images[: args.samples]).unsqueeze(1)
    x_test = torch.tensor(test.images[:2000]).unsqueeze(1)
    transform = SimCLRTransform(input_size=28, min_scale=0.2, jitter_strength=0.5, blur_p=0.2, mean=[0.286],
                                std=[0.353], grayscale=True)
    backbone, losses = train_simclr(x_train, transform, epochs=args.epochs, batch_size=128)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} iterations")
    normalize = lambda x: (x.float() / 255 - 0.286) / 0.353  # noqa: E731
    top1 = knn_top1(features(backbone, x_train, normalize), torch.tensor(train.labels[: args.samples]),
                    features(backbone, x_test, normalize), torch.tensor(test.labels[:2000]), k=200)
    print(f"kNN top-1 on 2,000 test images: {top1:.4f}")


if __name__ == "__main__":
    main()
