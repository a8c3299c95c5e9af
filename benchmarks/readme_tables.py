"""The README's results tables, generated from ``benchmarks/results/*.json``.

Two tables sit in README.md between marker comments and are rewritten by
``python benchmarks/run.py table`` (``--check``: exit 1 when the README differs, which the
test suite runs, so a results file and the README cannot drift apart):

* ``results:accuracy``: one row per ``[accuracy.<name>]`` entry of ``benchmarks/suite.toml``
  that has a results file, with a CPU column group (``fashion_mnist_<name>.json``) and a GPU
  one (``gpu/fashion_mnist_<name>.json``, written only by ``run.py accuracy --gpu`` on a
  CUDA device; the device is named in each row), plus the raw-pixel reference;
* ``results:speed``: start-up time, trainer overhead, data-pipeline throughput and GPU
  images/s, from the files the ``[speed.*]`` entries name.

Every number in them is read from a results file; each row names its file, and the file
records the command that produced it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from _subprocess import precision_of, repo_relative

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
MARKERS = ("accuracy", "speed")
FULL_PROTOCOL = (60000, 60000, 10000)
GPU_RESULTS = RESULTS / "gpu"


def load_suite(path: Path = REPO / "benchmarks" / "suite.toml") -> dict[str, Any]:
    from selfsup_core._compat import tomllib

    with path.open("rb") as fh:
        return tomllib.load(fh)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _device(record: dict[str, Any]) -> str:
    machine = record.get("machine") or {}
    gpu = machine.get("cuda")
    precision = precision_of(record.get("run", ""))
    where = gpu if gpu else f"CPU, {machine.get('cpus', '?')} cores"
    return f"{where}, {precision}" if precision else where


def _batch(record: dict[str, Any]) -> int | None:
    """The per-process batch: recorded by newer runs, else read from the command's
    ``data.samples_per_gpu=`` override or the config file."""
    if record.get("batch"):
        return int(record["batch"])
    match = re.search(r"data\.samples_per_gpu=(\d+)", record.get("command", ""))
    if match:
        return int(match.group(1))
    config = record.get("config")
    if config:
        from selfsup_core.config import load_config

        return int(load_config(REPO / config).data.get("data", {}).get("samples_per_gpu", 0)) or None
    return None


def _fmt(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _config_cell(config_path: str) -> str:
    """The config's file name, linked to it when it is in the repository."""
    name = Path(config_path).name
    return f"[{name}]({config_path})" if (REPO / config_path).is_file() else name


def _cpu_cells(record: dict[str, Any]) -> list[str]:
    return [str(record["epochs"]), str(_batch(record) or "—"), _fmt(record.get("knn_top1")),
            _fmt(record.get("linear_top1")), f"{record['train_seconds'] / 60:.1f}", _device(record)]


def _gpu_cells(entry: dict[str, Any], record: dict[str, Any] | None) -> list[str]:
    planned = int(entry.get("gpu_epochs", 0))
    if record is None:
        return [str(planned) if planned else "—", "—", "—", "—", "—",
                "not run yet" if planned else "not in the GPU suite"]
    finetune = (f"{record['finetune_top1']:.4f} ({record['scratch_top1']:.4f})"
                if record.get("finetune_top1") is not None else "—")
    return [str(record["epochs"]), _fmt(record.get("knn_top1")), _fmt(record.get("linear_top1")), finetune,
            f"{record['train_seconds'] / 60:.1f}", _device(record)]


def _source_note(label: str, file: Path, record: dict[str, Any], where: str = "") -> str:
    return f"- {label}: [`{repo_relative(file)}`]({repo_relative(file)}){where}; `{record['command']}`"


def accuracy_rows(suite: dict[str, Any], results: Path = RESULTS) -> tuple[list[list[str]], list[str]]:
    """Rows of the accuracy table (the CPU column group from ``results``, then the GPU one from
    ``results/gpu``) and the footnotes (protocol, source file and command per run). A row
    appears once either run exists."""
    rows, notes = [], []
    for name, entry in suite.get("accuracy", {}).items():
        file, gpu_file = results / f"fashion_mnist_{name}.json", results / "gpu" / f"fashion_mnist_{name}.json"
        record, gpu = _read(file), _read(gpu_file)
        if gpu is not None and not (gpu.get("machine") or {}).get("cuda"):
            raise SystemExit(f"{gpu_file}: not a GPU run (machine.cuda is empty); GPU results come from a GPU only")
        if record is None and gpu is None:
            continue
        label = entry.get("label", name)
        mark = ""
        if record is not None:
            protocol = (record["train_samples"], record["knn_bank_samples"], record["knn_test_samples"])
            mark = "" if protocol == FULL_PROTOCOL else "*"
            where = "" if not mark else (
                f" — {protocol[0]} training images, kNN bank {protocol[1]} / test {protocol[2]}; raw pixels on the "
                f"same images: kNN {record['raw_pixel_knn_top1']:.4f}")
            notes.append(_source_note(label, file, record, where))
        if gpu is not None:
            notes.append(_source_note(f"{label} (GPU)", gpu_file, gpu))
        cpu = _cpu_cells(record) if record is not None else ["—"] * 5 + ["not run"]
        rows.append([f"{label}{mark}", _config_cell((record or gpu)["config"]), *cpu, *_gpu_cells(entry, gpu)])
    reference = _read(results / "knn_reference.json")
    if reference is not None:
        raw = next(r for r in reference["raw_pixel_knn"] if r["features"] == "normalised pixels")
        rows.append(["Raw pixels (reference)", _config_cell("examples/configs/extractor_raw-pixels_fashion-mnist.toml"),
                     "—", "—", _fmt(raw.get("knn_top1")), _fmt(raw.get("linear_top1")), "—",
                     raw.get("device", "cpu").upper(), "—", "—", "—", "—", "—", "the same on any device"])
        notes.append(f"- Raw pixels: [`benchmarks/results/knn_reference.json`](benchmarks/results/knn_reference.json); "
                     f"`{raw['command']}`")
    return rows, notes


ACCURACY_HEADER = ["Method", "Config", "CPU: epochs", "batch", "kNN top-1", "linear top-1", "minutes", "device",
                   "GPU: epochs", "kNN top-1", "linear top-1", "fine-tuned (scratch)", "minutes", "device"]


def speed_rows(suite: dict[str, Any], results: Path = RESULTS) -> tuple[list[list[str]], list[str]]:
    """Rows (benchmark, figure, device) of the speed table and their sources."""
    rows, notes = [], []
    for name, entry in suite.get("speed", {}).items():
        file = results / entry["result"]
        record = _read(file)
        if record is None:
            if entry.get("needs") == "cuda":
                rows.append([name, "not measured yet: needs a GPU (`python benchmarks/run.py speed " + name + "`)",
                             "—"])
            continue
        for figure, device in _speed_figures(name, record):
            rows.append([name, figure, device])
        notes.append(f"- {name}: [`{repo_relative(file)}`]({repo_relative(file)}); `{record.get('command', '')}`")
    return rows, notes


def _speed_figures(name: str, record: dict[str, Any]) -> Iterable[tuple[str, str]]:
    if record.get("benchmark") == "startup":
        med = record["median_seconds"]
        torch_s = med["python -c 'import torch'"]
        for command in ("selfsup-run --help", "selfsup-run list"):
            yield (f"`{command}` {med[command]:.3f} s vs `python -c 'import torch'` {torch_s:.3f} s "
                   f"({med[command] / torch_s:.2f}x)", f"CPU ({record.get('machine', '')})")
    elif record.get("benchmark") == "trainer_overhead":
        yield (f"Trainer {record['trainer_images_per_s']:,.0f} img/s vs plain PyTorch loop "
               f"{record['plain_images_per_s']:,.0f} img/s (overhead {record['overhead_percent']:+.1f}%; "
               f"{_overhead_setup(record['setup'])})", record.get("device", ""))
    elif record.get("benchmark") == "data_throughput":
        for result in record["results"]:
            ips = result["images_per_second"]
            yield (f"SimCLR two-view pipeline, {result['size']} px, batch {result['batch_size']}: workers "
                   f"{ips['ours-cpu']:,.0f} img/s, batched on the device {ips['ours-device']:,.0f} img/s, "
                   f"hand-written torchvision {ips['torchvision']:,.0f} img/s",
                   f"{record.get('device_path_runs_on', '')}, {record.get('workers')} workers")
    elif "images_per_s" in record:
        views = f" ({record['views_per_s']:,.0f} views/s)" if "views_per_s" in record else ""
        yield (f"ResNet-50 SimCLR through `selfsup-run`, {record.get('size', 224)} px, batch {record.get('batch')}, "
               f"{record.get('precision')}: {record['images_per_s']:,.0f} img/s{views}",
               (record.get("machine") or {}).get("cuda") or "CPU")
    else:
        yield (f"see {name}", "")


def _overhead_setup(setup: dict[str, Any]) -> str:
    arch = "ResNet-50" if setup.get("resnet50") or setup.get("arch") == "resnet50" else f"small conv net w{setup['width']}"
    return f"{arch}, {setup['size']} px, batch {setup['batch']}, {setup['precision']}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render(suite: dict[str, Any], results: Path = RESULTS) -> dict[str, str]:
    """The Markdown of each marked block."""
    rows, notes = accuracy_rows(suite, results)
    accuracy = "\n".join([
        markdown_table(ACCURACY_HEADER, rows),
        "",
        "Two column groups: CPU-sized runs (`python benchmarks/run.py accuracy NAME`; ResNet-18 narrowed to width "
        "16 or a narrowed ViT, a few epochs) and the GPU schedule (`python benchmarks/run.py accuracy --gpu NAME`: "
        "each config's own network, 100 epochs for most methods, see `benchmarks/suite.toml`). "
        "\\* a shorter CPU protocol (see its source below); every GPU run uses the full one. kNN: weighted, "
        "k = 200, T = 0.1, bank = the 60k training images, scored on the 10k test images. Linear: BN + linear "
        "layer on frozen features, SGD, 100 epochs. Fine-tuned (scratch): the whole network fine-tuned with "
        "labels (the config's `FineTune` evaluator) and, in brackets, the same network trained the same way "
        "from its random initialisation. Minutes: pre-training wall time. linear top-1 —: that run predates "
        "the linear probe in the suite. GPU \"not run yet\": no GPU has run that entry so far. Sources:",
        "",
        *notes,
    ])
    rows, notes = speed_rows(suite, results)
    speed = "\n".join([markdown_table(["Benchmark", "Figure", "Device"], rows), "", "Sources:", "", *notes])
    return {"accuracy": accuracy, "speed": speed, "gpu": gpu_block(results)}


GPU_LABELS = {
    "a_fashion_mnist_simclr_r18": "(a) SimCLR ResNet-18 Fashion-MNIST",
    "b_simclr_r50_224": "(b) SimCLR ResNet-50 224 px",
    "c_mae_vit_b16_224": "(c) MAE ViT-B/16 224 px",
    "d_fashion_mnist_pretrain": "(d) SimCLR ResNet-18 Fashion-MNIST, full pre-training",
}


def gpu_block(results: Path = RESULTS) -> str:
    """The GPU table from ``gpu.json`` (``python benchmarks/run.py gpu``), or a line saying it
    has not been measured."""
    record = _read(results / "gpu.json")
    if not record or record.get("smoke") or record.get("device") == "cpu":
        return "not measured yet: needs a GPU (`python benchmarks/run.py gpu`)"
    rows = []
    for key, label in GPU_LABELS.items():
        item = record.get("items", {}).get(key)
        if item is None:
            continue
        if "error" in item:
            rows.append([label, f"failed: {item['error']}", "", "", ""])
        elif key == "d_fashion_mnist_pretrain":
            rows.append([label, f"{_fmt(item.get('train_seconds'), 0)} s training", "", "",
                         f"kNN {_fmt(item.get('knn_top1'))}, linear {_fmt(item.get('linear_top1'))}"])
        else:
            plain = _fmt(item.get("plain"), 0)
            if item.get("plain_compiled"):
                plain += f" (compiled {_fmt(item['plain_compiled'], 0)})"
            mfu = f"MFU {item['mfu'] * 100:.0f}%" if item.get("mfu") is not None else ""
            if item.get("sync_check"):
                mfu = (mfu + "; " if mfu else "") + f"sync check {item['sync_check'].split(':')[0]}"
            rows.append([label, _fmt(item.get("selfsup"), 0), plain, _fmt(item.get("ratio"), 2), mfu])
    table = markdown_table(["Work", "selfsup samples/s", "plain loop samples/s", "ratio", "notes"], rows)
    return f"{table}\n\n{record['device']}, torch {record['torch']}: [`benchmarks/results/gpu.json`](benchmarks/results/gpu.json)"


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` block replaced."""
    for name, body in blocks.items():
        begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        if begin not in text or end not in text:
            raise SystemExit(f"README.md: the markers {begin} and {end} are missing; add them where the table goes")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{body}\n{end}{tail}"
    return text


def update_readme(check: bool = False, readme: Path = README) -> bool:
    """Rewrite the README's tables; with ``check`` only compare. Returns whether it was current."""
    text = readme.read_text(encoding="utf-8")
    new = replace_blocks(text, render(load_suite()))
    if new == text:
        return True
    if not check:
        readme.write_text(new, encoding="utf-8")
    return False


__all__ = ["accuracy_rows", "load_suite", "markdown_table", "render", "replace_blocks", "speed_rows", "update_readme"]
