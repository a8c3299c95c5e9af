"""Start-up time of ``selfsup-run --help`` and ``selfsup-run list`` against ``import torch``.

Each command runs ``--repeat`` times as a fresh process, side by side in one run; the median
wall time is reported. Writes ``benchmarks/results/startup.json``.

    python benchmarks/startup.py [--repeat 15]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = str(Path(sys.executable).with_name("selfsup-run"))
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "selfsup-run --help": [SCRIPT, "--help"],
    "selfsup-run list": [SCRIPT, "list"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def median_seconds(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "startup.json"))
    args = parser.parse_args()
    for command in COMMANDS.values():  # warm the file cache once
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = {name: median_seconds(command, args.repeat) for name, command in COMMANDS.items()}
    torch_time = seconds["python -c 'import torch'"]
    result = {
        "benchmark": "startup",
        "command": f"python benchmarks/startup.py --repeat {args.repeat}",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "median_seconds": {k: round(v, 4) for k, v in seconds.items()},
        "ratio_to_import_torch": {k: round(v / torch_time, 3) for k, v in seconds.items()},
    }
    for name, value in seconds.items():
        print(f"{name:<28} {value * 1000:8.1f} ms   {value / torch_time:6.3f} x import torch")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
