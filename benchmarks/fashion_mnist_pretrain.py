"""Pre-train a method's Fashion-MNIST config for a short schedule and record its kNN accuracy.

Runs ``selfsup-run CONFIG`` (a real subprocess, the shipped config) with

- the training set cut to ``--train-samples`` random Fashion-MNIST training images (the
  ``Subset`` data source wrapped around the config's own source) and ``--epochs`` epochs;
- the online kNN evaluation (weighted kNN, k = 200, T = 0.1) run once, after the last epoch,
  with a bank of ``--bank-samples`` training images and ``--test-samples`` test images
  (``--bank-samples 60000 --test-samples 10000`` is the full protocol);
- ``--cfg-options`` passed on (e.g. a narrower backbone for a CPU run, said in the record).

and scores raw pixels (the ``Extractor``/``RawPixels`` config) on the same bank and test images,
the reference a trained backbone has to beat. With ``--linear`` the trained checkpoint is also
scored by the linear probe (``selfsup-run eval --evaluator linear``: BN + linear layer on the
frozen features, SGD, 100 epochs; trained on the bank images, scored on the test images). With
``--finetune`` (configs with a ``FineTune`` evaluator: the MIM methods) the checkpoint is
fine-tuned with labels (``--evaluator finetune``) and the same network is trained the same way
from its random initialisation (layer-wise lr decay off: it only makes sense for pre-trained
blocks), so that fine-tuned top-1 can be set against training from scratch for the same
epochs (``--finetune-epochs``, default: the evaluator's). Prints the figures and writes
``RESULTS/fashion_mnist_<name>.json`` (``--results``, default ``benchmarks/results``;
``--name``, default: the config's algorithm).

    python benchmarks/fashion_mnist_pretrain.py examples/configs/simclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml \
        --epochs 4 --train-samples 10000 [--device cpu] [--cfg-options KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from _subprocess import exit_on_sigterm, precision_of, repo_relative, run
from selfsup_core.fileio import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RAW_PIXELS = REPO / "examples" / "configs" / "extractor_raw-pixels_fashion-mnist.toml"
RAW_REFERENCE = RESULTS / "knn_reference.json"
FULL_PROTOCOL = (60000, 10000)


def recorded_raw_pixels() -> dict[str, float]:
    """The raw-pixel kNN figures ``knn_reference.py`` recorded for the full 60k/10k protocol."""
    try:
        record = json.loads(RAW_REFERENCE.read_text())
        return next(r for r in record["raw_pixel_knn"] if r["features"] == "normalised pixels")
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise SystemExit(f"{RAW_REFERENCE}: no raw-pixel kNN record ({exc}); run python benchmarks/knn_reference.py "
                         "or use --raw-pixels run") from None


def subset_tables(config: Any, train_samples: int, bank_samples: int, test_samples: int,
                  root: Path | None = None) -> dict[str, dict]:
    """The config's data sources wrapped in ``Subset`` tables (seed 0: the same images every
    run), read from ``root`` when given."""
    tables = {}
    for dotted, count in (("data.train.data_source", train_samples), ("evaluation.train.data_source", bank_samples),
                          ("evaluation.test.data_source", test_samples)):
        node = config.data
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise SystemExit(f"{config.filename}: {dotted} is missing; the benchmark needs a Fashion-MNIST config "
                             "with a data source and an [evaluation] section")
        source = {**node, "root": str(root)} if root is not None else node
        tables[dotted] = {"type": "Subset", "num_samples": count, "seed": 0, "source": source}
    return tables


def finetune_evaluator(config: Any, epochs: int | None) -> dict[str, Any]:
    """The config's ``FineTune`` evaluator table, with ``epochs`` (and a warm-up that fits in
    them) when given; exits with one line when the config has none."""
    evaluators = config.data.get("evaluation", {}).get("evaluators", [])
    table = next((dict(e) for e in evaluators if isinstance(e, dict) and e.get("type") == "FineTune"), None)
    if table is None:
        raise SystemExit(f"{config.filename}: --finetune needs a FineTune table in [[evaluation.evaluators]] "
                         "(see mae_vit-mini-p4_1xb256-coslr-100e_fashion-mnist.toml)")
    if epochs is not None:
        if epochs < 1:
            raise SystemExit(f"--finetune-epochs must be >= 1, got {epochs}")
        table["epochs"] = epochs
        table["warmup_epochs"] = min(int(table.get("warmup_epochs", 5)), epochs - 1)
    return table


def fine_tune_and_scratch(derived: Path, checkpoint: Path, table: dict[str, Any], tmp: Path, selfsup_run: str,
                          device: list[str], cfg_options: list[str]) -> dict[str, Any]:
    """Fine-tune ``checkpoint`` with ``table`` and train the same network from its random
    initialisation with the same table but no layer-wise lr decay; their figures."""
    from selfsup_core.testing import derive_config

    figures: dict[str, Any] = {"finetune_epochs": int(table.get("epochs", 100)), "finetune_recipe": table}
    runs = (("finetune", {**table}, ["--checkpoint", str(checkpoint)]),
            ("scratch", {**table, "layer_decay_rate": 1.0}, []))
    for tag, evaluator, checkpoint_args in runs:
        config = derive_config(derived, tmp / f"{tag}.toml", values={"evaluation.evaluators": [evaluator]})
        out = tmp / f"{tag}.json"
        print(f"{'fine-tuning the trained backbone' if tag == 'finetune' else 'training it from scratch'} "
              f"({figures['finetune_epochs']} epochs) ...", flush=True)
        command = [selfsup_run, "eval", str(config), *checkpoint_args, "--work-dir", str(tmp / tag), "--out", str(out),
                   "--evaluator", "finetune", *device]
        if cfg_options:
            command += ["--cfg-options", *cfg_options]
        seconds = run(command, tmp / f"{tag}.log")
        results = json.loads(out.read_text())["results"]
        figures.update({f"{tag}_top1": round(float(results["finetune_top1"]), 4),
                        f"{tag}_top5": round(float(results["finetune_top5"]), 4),
                        f"{tag}_seconds": round(seconds, 1)})
    figures["scratch_recipe"] = "the same FineTune table with layer_decay_rate = 1.0, from the random initialisation"
    return figures


def main(argv: list[str] | None = None) -> int:
    # a terminated benchmark must not leave its selfsup-run behind, training into the same work dir
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--bank-samples", type=int, default=10000)
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--device", default=None)
    parser.add_argument("--name", default=None, help="results file name: fashion_mnist_<name>.json")
    parser.add_argument("--note", default="", help="a sentence saved with the figures (what was changed and why)")
    parser.add_argument("--cfg-options", "--set", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", type=Path, default=None, help="work dir to keep (default: a temporary one)")
    parser.add_argument("--linear", action="store_true", help="also score the checkpoint with the linear probe")
    parser.add_argument("--finetune", action="store_true",
                        help="also fine-tune the checkpoint (the config's FineTune evaluator) and train the same "
                             "network from scratch with labels for the same epochs")
    parser.add_argument("--finetune-epochs", type=int, default=None, metavar="N",
                        help="fine-tuning epochs (default: the FineTune evaluator's)")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="the Fashion-MNIST files' folder (default: the config's sources')")
    parser.add_argument("--results", type=Path, default=RESULTS, metavar="DIR",
                        help="where the results file goes (default: benchmarks/results)")
    parser.add_argument("--raw-pixels", choices=("run", "reference"), default="run",
                        help="score raw pixels on the same images ('run', default) or, for the full protocol "
                             "(--bank-samples 60000 --test-samples 10000), take the figure knn_reference.py "
                             "recorded in benchmarks/results/knn_reference.json ('reference': saves a minute)")
    args = parser.parse_args(argv)
    if args.raw_pixels == "reference" and (args.bank_samples, args.test_samples) != FULL_PROTOCOL:
        parser.error("--raw-pixels reference needs the full protocol: --bank-samples 60000 --test-samples 10000")

    from selfsup_core.config import load_config
    from selfsup_core.testing import derive_config, read_metrics

    config_path = args.config.resolve()
    config = load_config(config_path, args.cfg_options)
    algorithm = str(config.data.get("model", {}).get("type", config_path.stem.split("_")[0]))
    name = args.name or algorithm.lower()
    selfsup_run = str(Path(sys.executable).with_name("selfsup-run"))
    device = ["--device", args.device] if args.device else []
    finetune_table = finetune_evaluator(config, args.finetune_epochs) if args.finetune else None

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp) / "train"
        tables = subset_tables(config, args.train_samples, args.bank_samples, args.test_samples, args.data_root)
        values = {"runner.max_epochs": args.epochs, "evaluation.interval": args.epochs, "evaluation.initial": False}
        derived = derive_config(config_path, Path(tmp) / "derived.toml", replace=tables, values=values)
        train_cmd = [selfsup_run, str(derived), "--work-dir", str(work), *device]
        if args.cfg_options:
            train_cmd += ["--cfg-options", *args.cfg_options]
        print(f"training {config_path.name}: {args.epochs} epochs on {args.train_samples} images ...", flush=True)
        train_seconds = run(train_cmd, Path(tmp) / "train.log")
        train = read_metrics(work, "train")
        evals = read_metrics(work, "eval")
        if not evals:
            raise SystemExit(f"{work}/metrics.jsonl has no evaluation record")
        result = evals[-1]

        linear: dict[str, Any] = {}
        if args.linear:
            print("linear probe on the trained backbone ...", flush=True)
            linear_out = Path(tmp) / "linear.json"
            linear_cmd = [selfsup_run, "eval", str(derived), "--checkpoint", str(work / "latest.pth"),
                          "--work-dir", str(Path(tmp) / "linear"), "--out", str(linear_out), "--evaluator", "linear",
                          *device]
            if args.cfg_options:
                linear_cmd += ["--cfg-options", *args.cfg_options]
            linear_seconds = run(linear_cmd, Path(tmp) / "linear.log")
            linear = {**json.loads(linear_out.read_text())["results"], "seconds": linear_seconds}

        finetune: dict[str, Any] = {}
        if finetune_table is not None:
            finetune = fine_tune_and_scratch(derived, work / "latest.pth", finetune_table, Path(tmp), selfsup_run,
                                             device, args.cfg_options)

        if args.raw_pixels == "reference":
            raw = recorded_raw_pixels()
        else:
            raw_tables = {k: v for k, v in tables.items() if k.startswith("evaluation.")}
            raw_config = derive_config(RAW_PIXELS, Path(tmp) / "raw.toml", replace=raw_tables)
            raw_out = Path(tmp) / "raw.json"
            run([selfsup_run, "eval", str(raw_config), "--work-dir", str(Path(tmp) / "raw"), "--out", str(raw_out),
                 "--evaluator", "knn", *(["linear"] if args.linear else []), *device], Path(tmp) / "raw.log")
            raw = json.loads(raw_out.read_text())["results"]
        header = next(line for line in (Path(tmp) / "train.log").read_text().splitlines() if line.startswith("selfsup "))

    by_epoch: dict[int, list[float]] = {}
    for record in train:
        by_epoch.setdefault(int(record["epoch"]), []).append(float(record["loss"]))
    epoch_loss = {epoch: round(sum(v) / len(v), 4) for epoch, v in sorted(by_epoch.items())}
    speed = [r["images_per_s"] for r in train if "images_per_s" in r]
    import torch

    figures = {
        "config": repo_relative(config_path),
        "algorithm": algorithm,
        "command": "python benchmarks/fashion_mnist_pretrain.py " + " ".join(
            [str(args.config), "--epochs", str(args.epochs), "--train-samples", str(args.train_samples),
             "--bank-samples", str(args.bank_samples), "--test-samples", str(args.test_samples), *device]
            + (["--raw-pixels", "reference"] if args.raw_pixels == "reference" else [])
            + (["--linear"] if args.linear else [])
            + (["--finetune"] if args.finetune else [])
            + (["--finetune-epochs", str(args.finetune_epochs)] if args.finetune_epochs else [])
            + (["--data-root", str(args.data_root)] if args.data_root else [])
            + (["--results", repo_relative(args.results.resolve())] if args.results.resolve() != RESULTS.resolve() else [])
            + (["--name", args.name] if args.name else [])
            + (["--cfg-options", *args.cfg_options] if args.cfg_options else [])),
        "note": args.note,
        "run": header,
        "epochs": args.epochs,
        "train_samples": args.train_samples,
        "knn_bank_samples": args.bank_samples,
        "knn_test_samples": args.test_samples,
        "knn_top1": round(float(result["knn_top1"]), 4),
        "knn_top5": round(float(result["knn_top5"]), 4),
        "raw_pixel_knn_top1": round(float(raw["knn_top1"]), 4),
        **({"linear_top1": round(float(linear["linear_top1"]), 4),
            "linear_top5": round(float(linear["linear_top5"]), 4),
            "linear_seconds": round(linear["seconds"], 1),
            "raw_pixel_linear_top1": round(float(raw["linear_top1"]), 4) if "linear_top1" in raw else None}
           if linear else {}),
        **finetune,
        "raw_pixel_source": ("benchmarks/results/knn_reference.json (same 60000/10000 images)"
                             if args.raw_pixels == "reference" else "scored in this run on the same images"),
        "batch": int(config.data.get("data", {}).get("samples_per_gpu", 0)),
        "precision": precision_of(header),
        "train_seconds": round(train_seconds, 1),
        "images_per_s_median": sorted(speed)[len(speed) // 2] if speed else None,
        "mean_loss_by_epoch": epoch_loss,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"fashion_mnist_{name}.json"
    atomic_write_text(out, json.dumps(figures, indent=2) + "\n")
    print(f"{algorithm}: kNN top-1 {figures['knn_top1']:.4f} (raw pixels {figures['raw_pixel_knn_top1']:.4f} on the "
          f"same {args.bank_samples}/{args.test_samples} images) after {args.epochs} epochs on {args.train_samples} "
          f"images in {train_seconds:.0f} s; loss by epoch {epoch_loss}")
    if linear:
        print(f"{algorithm}: linear probe top-1 {figures['linear_top1']:.4f} (raw pixels "
              f"{figures['raw_pixel_linear_top1']}) in {linear['seconds']:.0f} s")
    if finetune:
        print(f"{algorithm}: fine-tuned top-1 {figures['finetune_top1']:.4f}, the same network from scratch "
              f"{figures['scratch_top1']:.4f} ({figures['finetune_epochs']} epochs each)")
    print(f"wrote {repo_relative(out.resolve())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
