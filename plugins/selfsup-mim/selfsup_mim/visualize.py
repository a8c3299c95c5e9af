"""Reconstruction visualisation: a PNG of original / masked / reconstructed images.

    python -m selfsup_mim.visualize CONFIG --checkpoint WORK_DIR/latest.pth --out recon.png \
        [--num-images 8] [--split test] [--seed 0] [--scale 4] [--cfg-options KEY=VALUE ...]

The config's model (``MAE`` or ``SimMIM``) is built and the checkpoint loaded; the first
``--num-images`` images of the ``[evaluation.<split>]`` dataset (no augmentation; the
``data.train`` dataset when the config has no ``[evaluation]``) are masked at random (seeded)
and reconstructed. One column per image, four rows:

1. the original image;
2. the masked input (removed patches grey);
3. the model's reconstruction of every patch (for MAE with ``norm_pix``, each predicted patch
   is mapped back with the mean and standard deviation of the original patch, as in the MAE
   paper's figures);
4. the reconstruction with the visible patches pasted back from the original.

SimMIM's masks come from the ``SimMIMMaskGenerator`` of ``data.train.pipeline``. Pixels are
shown de-normalised with the ``Normalize`` of the dataset's pipeline. The PNG is written
atomically (a temporary file in the same folder, then a rename). :func:`render` does the
work for callers that already have a model and images.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from selfsup_core.api import atomic_write

__all__ = ["main", "reconstruct_rows", "render", "save_grid"]

GAP = 2


def _find(pipeline: Any, type_name: str) -> Mapping[str, Any] | None:
    for table in pipeline or []:
        if isinstance(table, Mapping) and table.get("type") == type_name:
            return table
    return None


def _normalize_stats(pipeline: Any, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    table = _find(pipeline, "Normalize")
    if table is None:
        return torch.zeros(channels), torch.ones(channels)
    return torch.tensor(table["mean"], dtype=torch.float32), torch.tensor(table["std"], dtype=torch.float32)


@torch.no_grad()
def reconstruct_rows(model: torch.nn.Module, img: torch.Tensor,
                     mask: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The four rows ``[original, masked, reconstruction, reconstruction + visible]``, each
    ``(N, C, H, W)`` in the model's (normalised) pixel space, and the pixel mask
    ``(N, 1, H, W)`` (1 = removed).

    ``model``: an ``MAE`` (masks drawn by its backbone from torch's RNG) or a ``SimMIM``
    (``mask (N, h, w)`` required, 1 = masked).
    """
    from .heads import patchify, unpatchify
    from .mae import MAE

    model.eval()
    n, c, h, w = img.shape
    if isinstance(model, MAE):
        p = model.backbone.patch_size
        grid = (h // p, w // p)
        out = model.reconstruct(img)
        pred = out["pred"].float()
        if getattr(model.head, "norm_pix", False):
            target = patchify(img.float(), p)
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True, unbiased=False) + 1.0e-6) ** 0.5
            pred = pred * std + mean
        rec = unpatchify(pred, p, grid, c)
        pixel_mask = out["mask"].reshape(n, 1, *grid)
        pixel_mask = pixel_mask.repeat_interleave(p, 2).repeat_interleave(p, 3)
    else:  # SimMIM
        if mask is None:
            raise ValueError("reconstruct_rows: SimMIM needs a mask (N, h, w)")
        rec = model.reconstruct(img, mask)["img_rec"].float()
        pixel_mask = model.head.pixel_mask(mask, (h, w))
    pixel_mask = pixel_mask.to(img.dtype)
    masked = img * (1 - pixel_mask)
    pasted = img * (1 - pixel_mask) + rec * pixel_mask
    return [img, masked, rec, pasted], pixel_mask


def save_grid(rows: Sequence[torch.Tensor], out: str | os.PathLike[str], scale: int = 4) -> Path:
    """Tile ``rows`` (each ``(N, C, H, W)`` in ``[0, 1]``, C = 1 or 3) into one PNG, one row
    per entry and one column per image, ``scale`` times enlarged (nearest), white gaps;
    written atomically. Returns the path."""
    from PIL import Image

    n, c, h, w = rows[0].shape
    hs, ws = h * scale, w * scale
    canvas = torch.ones(c, len(rows) * (hs + GAP) + GAP, n * (ws + GAP) + GAP)
    for r, row in enumerate(rows):
        big = row.float().clamp(0, 1).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        for i in range(n):
            top, left = GAP + r * (hs + GAP), GAP + i * (ws + GAP)
            canvas[:, top:top + hs, left:left + ws] = big[i]
    array = (canvas * 255).round().to(torch.uint8)
    if c == 1:
        image = Image.fromarray(array[0].numpy(), mode="L")
    else:
        image = Image.fromarray(array.permute(1, 2, 0).contiguous().numpy(), mode="RGB")
    out = Path(out)
    atomic_write(out, lambda handle: image.save(handle, format="PNG"), durable=False)
    return out


def render(model: torch.nn.Module, img: torch.Tensor, out: str | os.PathLike[str], *, mean: torch.Tensor,
           std: torch.Tensor, mask: torch.Tensor | None = None, scale: int = 4) -> Path:
    """Reconstruct ``img`` (normalised with ``mean``/``std``) and write the four-row PNG."""
    rows, pixel_mask = reconstruct_rows(model, img, mask)
    mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    shown = [row.float() * std + mean for row in rows]
    shown[1] = shown[1] * (1 - pixel_mask) + 0.5 * pixel_mask  # removed patches grey
    return save_grid(shown, out, scale)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfsup_mim.visualize",
                                     description="Write a PNG of original / masked / reconstructed images.")
    parser.add_argument("config", type=Path)
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint of this config (latest.pth)")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--split", choices=("test", "train"), default="test", help="[evaluation.<split>] dataset")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random masks")
    parser.add_argument("--scale", type=int, default=4, help="enlargement of every pixel in the PNG")
    parser.add_argument("--cfg-options", "--set", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from selfsup_core.api import Builder, build, build_model
    from selfsup_core.api import load_config
    from selfsup_core.api import load_weights
    from selfsup_core.api import SelfSupError

    from .mae import MAE

    try:
        config = load_config(args.config, args.cfg_options)
        model = build_model(config)
        load_weights(model, args.checkpoint)
        evaluation = config.data.get("evaluation", {})
        if args.split in evaluation:
            table, path = evaluation[args.split], ("evaluation", args.split)
        else:
            table, path = config.data["data"]["train"], ("data", "train")
        dataset = Builder(config).build(table, "datasets", path)
        count = min(args.num_images, len(dataset))
        img = torch.stack([dataset[i]["img"] for i in range(count)])
        mean, std = _normalize_stats(table.get("pipeline"), img.shape[1])
        mask = None
        generator = _find(config.data["data"]["train"].get("pipeline"), "SimMIMMaskGenerator")
        torch.manual_seed(args.seed)
        if not isinstance(model, MAE):
            if generator is None:
                raise SystemExit(f"{args.config}: data.train.pipeline has no SimMIMMaskGenerator to draw masks from")
            maker = build(dict(generator), "transforms")
            mask = torch.stack([maker.generate() for _ in range(count)])
        out = render(model, img, args.out, mean=mean, std=std, mask=mask, scale=args.scale)
    except SelfSupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (rows: original, masked, reconstruction, reconstruction + visible; {count} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
