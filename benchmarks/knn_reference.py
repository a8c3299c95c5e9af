"""The raw-pixel kNN reference on Fashion-MNIST, and the speed of the chunked kNN search.

1. Accuracy: ``selfsup-run eval examples/configs/extractor_raw-pixels_fashion-mnist.toml``
   (weighted kNN, k = 200, T = 0.1, cosine; bank = the 60k train images, scored = the 10k
   test images) on normalised pixels, as the pre-training configs feed them, and on plain
   [0, 1] pixels; on normalised pixels also the linear probe (BN + linear, SGD, 100
   epochs on cached features). Any trained backbone has to beat these.
2. Speed: ``selfsup_eval.knn.knn_class_scores`` on random features: a bank of ``--bank``
   rows x ``--dim`` against ``--queries`` queries (defaults: ImageNet-sized, 1.28M x 2048 vs
   50k, on a GPU; 100k x 512 vs 10k on a CPU), in chunks within a 1 GiB similarity budget.

Writes ``benchmarks/results/knn_reference.json``.

    python benchmarks/knn_reference.py [--device auto|cpu|cuda] [--skip-accuracy] [--skip-speed]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "examples/configs/extractor_raw-pixels_fashion-mnist.toml"
PLAIN_PIPELINE = '[{type="ToImage"}, {type="ToDtype", dtype="float32", scale=true}]'


def accuracy(device: str) -> list[dict]:
    runs = []
    for name, overrides in (
        ("normalised pixels", ["--evaluator", "knn", "linear"]),
        ("[0, 1] pixels", ["--set", f"evaluation.train.pipeline={PLAIN_PIPELINE}",
                           f"evaluation.test.pipeline={PLAIN_PIPELINE}"]),
    ):
        with tempfile.TemporaryDirectory() as work:
            command = ["selfsup-run", "eval", CONFIG, "--work-dir", work, "--device", device, *overrides]
            start = time.perf_counter()
            subprocess.run([str(Path(sys.executable).with_name("selfsup-run")), *command[1:]], check=True, cwd=REPO,
                           stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            record = json.loads(next(Path(work, "eval").glob("*.json")).read_text())
        results = record["results"]
        linear = f", linear probe top-1 {results['linear_top1']:.4f}" if "linear_top1" in results else ""
        print(f"raw-pixel kNN ({name}): top-1 {results['knn_top1']:.4f}, top-5 {results['knn_top5']:.4f}{linear} "
              f"({seconds:.1f} s on {record['device']})")
        runs.append({"features": name, "command": " ".join(command[:3] + command[5:]), **results,
                     "k": 200, "temperature": 0.1,
                     "evaluators": record["evaluators"], "seconds": round(seconds, 1), "device": record["device"]})
    return runs


def speed(device_name: str, bank: int | None, queries: int | None, dim: int | None) -> dict:
    import torch

    from selfsup_eval.knn import knn_class_scores

    device = torch.device(device_name)
    gpu = device.type == "cuda"
    bank = bank or (1_281_167 if gpu else 100_000)
    queries = queries or (50_000 if gpu else 10_000)
    dim = dim or (2048 if gpu else 512)
    generator = torch.Generator(device=device).manual_seed(0)
    bank_features = torch.randn(bank, dim, device=device, generator=generator)
    labels = torch.randint(0, 1000, (bank,), device=device, generator=generator)
    query_features = torch.randn(queries, dim, device=device, generator=generator)

    def run() -> float:
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        scores = knn_class_scores(query_features, bank_features, labels, 1000, k=200, temperature=0.1)
        scores.sum().item()
        return time.perf_counter() - start

    run() if gpu else None  # warm-up (cuBLAS handles, allocator)
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = run()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None
    print(f"kNN search: {queries} queries x {bank} bank x {dim}-d on {device}: {seconds:.2f} s "
          f"({queries / seconds:,.0f} queries/s" + (f", peak {peak:.1f} GiB" if peak is not None else "") + ")")
    return {"bank": bank, "queries": queries, "dim": dim, "k": 200, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine(),
            "seconds": round(seconds, 3), "queries_per_s": round(queries / seconds, 1),
            "peak_gib": round(peak, 2) if peak is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--bank", type=int)
    parser.add_argument("--queries", type=int)
    parser.add_argument("--dim", type=int)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "knn_reference.json"))
    args = parser.parse_args()
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    result: dict = {
        "benchmark": "knn_reference",
        "command": "python benchmarks/knn_reference.py" + ("" if args.device == "auto" else f" --device {args.device}"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {platform.system()}, {torch.get_num_threads()} threads",
    }
    out = Path(args.out)
    if out.exists():  # keep the part not re-measured
        previous = json.loads(out.read_text())
        result.update({k: previous[k] for k in ("raw_pixel_knn", "knn_search") if k in previous})
    if not args.skip_accuracy:
        result["raw_pixel_knn"] = accuracy(device)
    if not args.skip_speed:
        result["knn_search"] = speed(device, args.bank, args.queries, args.dim)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
