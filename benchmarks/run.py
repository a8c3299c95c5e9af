"""One entry point for the benchmarks: the accuracy suite, the speed suite and the README
tables generated from their results.

    python benchmarks/run.py accuracy [NAME ...] [--no-linear] [--device DEV] [--dry-run]
    python benchmarks/run.py accuracy --gpu [NAME ...] [--missing] [--epochs N] [--results DIR] [--smoke]
    python benchmarks/run.py speed [NAME ...] [--dry-run]
    python benchmarks/run.py table [--check]
    python benchmarks/run.py gpu [--device cpu --smoke] [--out FILE] [--items a,b,c,d]
    python benchmarks/run.py all [--dry-run]

* ``accuracy``: every ``[accuracy.NAME]`` entry of ``benchmarks/suite.toml`` (or the NAMEs
  given) pre-trains its Fashion-MNIST config with ``fashion_mnist_pretrain.py`` and scores
  it by kNN and (unless ``--no-linear``) the linear probe, writing
  ``benchmarks/results/fashion_mnist_NAME.json``. The entries hold CPU-sized schedules
  (ResNet-18 at width 16, a few epochs).
* ``accuracy --gpu``: the GPU schedule. Each entry's config at its own network (no CPU
  ``--cfg-options``; its ``gpu_cfg_options`` instead) on the full protocol (60k training
  images, kNN bank 60k, 10k test images) for its ``gpu_epochs`` (``--epochs`` overrides;
  entries with 0 are left out), kNN and linear probe, and for ``gpu_finetune`` entries
  (MAE, SimMIM) fine-tuning against the same network trained from scratch. Writes
  ``benchmarks/results/gpu/fashion_mnist_NAME.json``, which needs a CUDA device; ``--missing``
  runs only the entries without such a file (one GPU sitting after another), ``--results
  DIR`` writes elsewhere (e.g. ``$OUT`` on a lent machine). ``--smoke --results DIR`` runs
  the same commands on 256/256/128 images for 1 epoch (1 fine-tuning epoch) on any device:
  the check to run on a CPU before a GPU sitting.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import readme_tables

REPO = Path(__file__).resolve().parents[1]
GPU_RESULTS = readme_tables.GPU_RESULTS
SMOKE_PROTOCOL = (256, 256, 128)


def _pretrain_command(name: str, config: str, epochs: int, samples: tuple[int, int, int], *, linear: bool,
                      device: str | None, options: list[str], results: Path | None = None,
                      extra: Sequence[str] = ()) -> list[str]:
    """A ``fashion_mnist_pretrain.py`` command line writing to ``results`` (default: its own),
    ``extra`` arguments after the common ones, ``options`` as its ``--cfg-options``; raw pixels
    from the recorded reference on the full protocol, scored in the run otherwise."""
    command = [sys.executable, "benchmarks/fashion_mnist_pretrain.py", config,
               "--epochs", str(epochs), "--train-samples", str(samples[0]),
               "--bank-samples", str(samples[1]), "--test-samples", str(samples[2]), "--name", name]
    if results is not None:
        command += ["--results", str(results)]
    if device:
        command += ["--device", device]
    if samples == readme_tables.FULL_PROTOCOL:
        command += ["--raw-pixels", "reference"]
    if linear:
        command.append("--linear")
    command += list(extra)
    if options:
        command += ["--cfg-options", *options]
    return command


def accuracy_command(name: str, entry: dict[str, Any], *, linear: bool, device: str | None) -> list[str]:
    """The ``fashion_mnist_pretrain.py`` command line of one accuracy entry's CPU-sized schedule."""
    return _pretrain_command(name, entry["config"], entry["epochs"],
                             (entry["train_samples"], entry["bank_samples"], entry["test_samples"]),
                             linear=linear, device=device, extra=["--note", entry["note"]] if entry.get("note") else [],
                             options=list(entry.get("cfg_options", [])))


def gpu_accuracy_command(name: str, entry: dict[str, Any], *, linear: bool, device: str | None, epochs: int | None,
                         results: Path, smoke: bool = False) -> list[str]:
    """The ``fashion_mnist_pretrain.py`` command line of one entry's GPU schedule (see the
    module docstring); ``smoke``: the same on a few images for one epoch."""
    from selfsup_core.config import load_config

    samples = SMOKE_PROTOCOL if smoke else readme_tables.FULL_PROTOCOL
    extra = ["--finetune", *(["--finetune-epochs", "1"] if smoke else [])] if entry.get("gpu_finetune") else []
    options = list(entry.get("gpu_cfg_options", []))
    if smoke and "memory_bank" in load_config(REPO / entry["config"]).data.get("model", {}):
        options.append(f"model.memory_bank.length={samples[0]}")  # a memory bank holds one slot per image
    return _pretrain_command(name, entry["config"], 1 if smoke else epochs or entry["gpu_epochs"], samples,
                             linear=linear, device=device, options=options, results=results, extra=extra)


def gpu_entries(entries: dict[str, Any], *, missing: bool, results: Path) -> dict[str, Any]:
    """The entries in the GPU suite (``gpu_epochs`` > 0), without those that have a results
    file in ``results`` when ``missing``."""
    chosen = {n: e for n, e in entries.items() if e.get("gpu_epochs", 0) > 0}
    if missing:
        chosen = {n: e for n, e in chosen.items() if not (results / f"fashion_mnist_{n}.json").is_file()}
    return chosen


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


def gpu_problem(args: argparse.Namespace) -> str | None:
    """Why the ``--gpu`` options of ``args`` cannot run here (one line), or None. The GPU
    results files are written only by a run on a CUDA device, never filled from a CPU."""
    if args.suite != "accuracy" or not args.gpu:
        return "--epochs, --missing, --results and --smoke go with: accuracy --gpu"
    if args.smoke and args.results is None:
        return "--smoke needs --results DIR (a smoke run must not write benchmarks/results/gpu)"
    if args.epochs is not None and args.epochs < 1:
        return f"--epochs must be >= 1, got {args.epochs}"
    if args.results is None and not args.dry_run and (not has_cuda() or (args.device or "cuda").startswith("cpu")):
        return (f"no CUDA device here: {GPU_RESULTS.relative_to(REPO)} holds GPU runs only; check the commands on a "
                "CPU with --smoke --results DIR")
    return None


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
    parser.add_argument("--gpu", action="store_true", help="accuracy: the GPU schedule (see above)")
    parser.add_argument("--epochs", type=int, default=None, help="with --gpu: epochs for every entry (default: "
                                                                 "each entry's gpu_epochs)")
    parser.add_argument("--missing", action="store_true", help="with --gpu: only entries without a results file")
    parser.add_argument("--results", type=Path, default=None, metavar="DIR",
                        help=f"with --gpu: where the results go (default: {GPU_RESULTS.relative_to(REPO)})")
    parser.add_argument("--smoke", action="store_true", help="with --gpu --results DIR: 256 images, 1 epoch")
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
    if args.gpu or args.smoke or args.missing or args.results or args.epochs:
        problem = gpu_problem(args)
        if problem:
            print(f"run.py accuracy --gpu: {problem}", file=sys.stderr)
            return 2
        results = (args.results or GPU_RESULTS).resolve()
        entries = gpu_entries(select(suite["accuracy"], args.names, "accuracy"), missing=args.missing, results=results)
        commands += [(f"accuracy.{name}", gpu_accuracy_command(name, entry, linear=args.linear, device=args.device,
                                                               epochs=args.epochs, results=results, smoke=args.smoke))
                     for name, entry in entries.items()]
        if not commands:
            print(f"no GPU accuracy entry left to run (results in {results})")
    elif args.suite in ("accuracy", "all"):
        entries = select(suite["accuracy"], args.names if args.suite == "accuracy" else [], "accuracy")
        commands += [(f"accuracy.{name}", accuracy_command(name, entry, linear=args.linear, device=args.device))
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
