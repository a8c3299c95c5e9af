"""One entry point for the benchmarks: the accuracy suite, the speed suite and the README
tables generated from their results.

    python benchmarks/run.py accuracy [NAME ...] [--no-linear] [--device DEV] [--gpu] [--dry-run]
    python benchmarks/run.py speed [NAME ...] [--dry-run]
    python benchmarks/run.py table [--check]
    python benchmarks/run.py gpu [--device cpu --smoke] [--out FILE] [--items a,b,c,d]
    python benchmarks/run.py all [--dry-run]

* ``accuracy``: every ``[accuracy.NAME]`` entry of ``benchmarks/suite.toml`` (or the NAMEs
  given) pre-trains its Fashion-MNIST config with ``fashion_mnist_pretrain.py`` and scores
  it by kNN and (unless ``--no-linear``) the linear probe, writing
  ``benchmarks/results/fashion_mnist_NAME.json``. The entries hold CPU-sized schedules
  (ResNet-18 at width 16, a few epochs). ``--gpu`` drops their ``--cfg-options`` and runs
  each config's own network on the full protocol (60k training images, kNN bank 60k, 10k
  test images) for ``--epochs`` (default 100) epochs instead: the GPU schedule.
* ``speed``: each ``[speed.NAME]`` script (start-up time, trainer overhead against a plain
  loop, data-pipeline throughput, and on a GPU ResNet-50 trainer overhead and SimCLR
  images/s at 224 px); entries with ``needs = "cuda"`` are skipped without a GPU.
* ``table``: rewrites the README's results tables from the results files
  (``readme_tables.py``); ``--check`` exits 1 when the README is out of date.

* ``gpu``: ``gpu_suite.py`` (selfsup against a hand-written loop, MFU, a full pre-training)
  writing ``benchmarks/results/gpu.json``; ``--device cpu --smoke --out FILE`` checks it on a CPU.

A failed entry is reported and the suite goes on; the exit status is 1 when any failed.
The tables are regenerated after ``accuracy``, ``speed`` and ``all``.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import readme_tables

REPO = Path(__file__).resolve().parents[1]


def accuracy_command(name: str, entry: dict[str, Any], *, linear: bool, device: str | None,
                     gpu_epochs: int | None) -> list[str]:
    """The ``fashion_mnist_pretrain.py`` command line of one accuracy entry."""
    samples = readme_tables.FULL_PROTOCOL if gpu_epochs else (entry["train_samples"], entry["bank_samples"], entry["test_samples"])
    command = [sys.executable, "benchmarks/fashion_mnist_pretrain.py", entry["config"],
               "--epochs", str(gpu_epochs or entry["epochs"]), "--train-samples", str(samples[0]),
               "--bank-samples", str(samples[1]), "--test-samples", str(samples[2]), "--name", name]
    if device:
        command += ["--device", device]
    if samples == readme_tables.FULL_PROTOCOL:
        command += ["--raw-pixels", "reference"]
    if linear:
        command.append("--linear")
    if entry.get("note") and not gpu_epochs:
        command += ["--note", entry["note"]]
    options = [] if gpu_epochs else list(entry.get("cfg_options", []))
    if options:
        command += ["--cfg-options", *options]
    return command


def speed_command(entry: dict[str, Any]) -> list[str]:
    return [sys.executable, entry["script"], *entry.get("args", [])]


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def select(table: dict[str, Any], names: list[str], kind: str) -> dict[str, Any]:
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"benchmarks/suite.toml: no [{kind}.{unknown[0]}] entry; entries: {', '.join(table)}")
    return {n: table[n] for n in names} if names else dict(table)


def run_all(commands: list[tuple[str, list[str] | str]], dry_run: bool) -> list[str]:
    """Run each command from the repository root; returns the names that failed. A string in
    place of a command is a reason to skip."""
    failed = []
    for name, command in commands:
        if isinstance(command, str):
            print(f"== {name}: skipped ({command})", flush=True)
            continue
        shown = shlex.join(["python" if part == sys.executable else part for part in command])
        print(f"== {name}: {shown}", flush=True)
        if dry_run:
            continue
        start = time.perf_counter()
        code = subprocess.call(command, cwd=REPO)
        print(f"== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - start:.0f} s",
              flush=True)
        if code:
            failed.append(name)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["gpu"]:  # its own options: see gpu_suite.py
        import gpu_suite

        code = gpu_suite.main(argv[1:])
        if "--out" not in argv:
            readme_tables.update_readme()
        return code
    parser.add_argument("suite", choices=("accuracy", "speed", "table", "all", "gpu"))
    parser.add_argument("names", nargs="*", help="entries of benchmarks/suite.toml (default: all)")
    parser.add_argument("--no-linear", dest="linear", action="store_false", help="kNN only (saves a minute per entry)")
    parser.add_argument("--device", default=None, help="passed to every pre-training (default: the config's)")
    parser.add_argument("--gpu", action="store_true", help="each config's own network and --epochs epochs")
    parser.add_argument("--epochs", type=int, default=100, help="epochs per method with --gpu (default 100)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--check", action="store_true", help="table: exit 1 when README.md is out of date")
    args = parser.parse_args(argv)
    suite = readme_tables.load_suite()

    if args.suite == "table":
        current = readme_tables.update_readme(check=args.check)
        if args.check:
            print("README.md results tables are up to date" if current else
                  "README.md results tables differ from benchmarks/results: run python benchmarks/run.py table")
            return 0 if current else 1
        print("README.md results tables " + ("were up to date" if current else "rewritten"))
        return 0

    commands: list[tuple[str, list[str] | str]] = []
    if args.suite in ("accuracy", "all"):
        entries = select(suite["accuracy"], args.names if args.suite == "accuracy" else [], "accuracy")
        commands += [(f"accuracy.{name}", accuracy_command(name, entry, linear=args.linear, device=args.device,
                                                           gpu_epochs=args.epochs if args.gpu else None))
                     for name, entry in entries.items()]
    if args.suite in ("speed", "all"):
        entries = select(suite["speed"], args.names if args.suite == "speed" else [], "speed")
        cuda = has_cuda() if any(e.get("needs") == "cuda" for e in entries.values()) else False
        commands += [(f"speed.{name}", "needs a CUDA device" if entry.get("needs") == "cuda" and not cuda
                      else speed_command(entry)) for name, entry in entries.items()]
    failed = run_all(commands, args.dry_run)
    if not args.dry_run:
        current = readme_tables.update_readme()
        print("README.md results tables " + ("were up to date" if current else "rewritten"))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
