"""InfoNCE from ``(pos, neg)`` similarities, two ways, side by side in one process:
``ContrastiveHead``'s ``cross_entropy(cat(pos, neg) / T, 0)`` against the algebraically
equal ``mean(logaddexp(pos / T, logsumexp(neg / T)) - pos / T)``, which avoids the
concatenated copy. Forward + backward, for MoCo-like (few queries, a long queue) and
DenseCL-like (many dense queries) shapes; the two forms alternate for ``--rounds`` rounds
and the best time of each is kept.

    python benchmarks/contrastive_loss.py [--device cpu|cuda] [--rounds 5]

Writes ``benchmarks/results/contrastive_loss_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = ((256, 65536), (2048, 4096), (512, 16384))  # (queries N, negatives K)
TEMPERATURE = 0.2


def cross_entropy_form(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    logits = torch.cat((pos, neg), dim=1) / TEMPERATURE
    return F.cross_entropy(logits, torch.zeros(logits.size(0), dtype=torch.long, device=logits.device))


def logsumexp_form(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    p = pos[:, 0] / TEMPERATURE
    return (torch.logaddexp(p, torch.logsumexp(neg / TEMPERATURE, dim=1)) - p).mean()


FORMS = {"cross_entropy": cross_entropy_form, "logsumexp": logsumexp_form}


def seconds(form, pos: torch.Tensor, neg: torch.Tensor, repeats: int = 3) -> float:
    """Mean seconds of one forward + backward."""
    if pos.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        form(pos, neg).backward()
    if pos.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for n, k in SHAPES:
        pos = torch.randn(n, 1, device=args.device).requires_grad_()
        neg = torch.randn(n, k, device=args.device).requires_grad_()
        values = [f(pos, neg).item() for f in FORMS.values()]
        best = {name: float("inf") for name in FORMS}
        for _ in range(args.rounds):
            for name, form in FORMS.items():
                best[name] = min(best[name], seconds(form, pos, neg))
        row = {"n": n, "k": k, "loss_difference": abs(values[0] - values[1]),
               **{f"{name}_ms": round(1000 * s, 2) for name, s in best.items()},
               "logsumexp_speedup": round(best["cross_entropy"] / best["logsumexp"], 3)}
        rows.append(row)
        print(f"N={n:5d} K={k:6d}  cross_entropy {row['cross_entropy_ms']:8.2f} ms  logsumexp "
              f"{row['logsumexp_ms']:8.2f} ms  speed-up of logsumexp x{row['logsumexp_speedup']:.2f}")
    result = {"benchmark": "contrastive_loss", "device": args.device, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "note": "forward + backward of the InfoNCE loss; the forms alternate, best of the rounds",
              "rows": rows}
    out = Path(__file__).resolve().parent / "results" / f"contrastive_loss_{args.device.split(':')[0]}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
