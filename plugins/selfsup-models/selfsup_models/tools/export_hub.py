"""``selfsup-run export-hub CKPT|WORK_DIR OUT_DIR``: a backbone that leaves selfsup.

Writes a folder ready for a model hub, loadable without selfsup:

* ``backbone.pt2``: a ``torch.export`` program of the backbone in eval mode, taking images
  ``(N, C, H, W)`` (any batch size) and returning the last feature map, e.g.
  ``torch.export.load("backbone.pt2").module()(x)`` in a Python with only torch;
* ``model.safetensors``: the backbone's weights (its own key names);
* ``backbone.onnx`` where ``onnx`` and ``onnxruntime`` are installed (checked with onnxruntime),
  else skipped with a note;
* ``timm.safetensors`` + ``config.json`` when the backbone is a timm architecture (a standard
  ResNet or ViT: ``timm.create_model(config["architecture"])`` loads it);
* ``config.toml``: the run's resolved config; ``README.md``: a generated model card with the
  pre-training recipe and the run's measured results (``metrics.jsonl``), when present.

The architecture comes from the run's ``config.toml`` (the trainer writes it next to the
checkpoints); the input size from its data pipeline (``--input-size`` overrides). Every file
is checked: the exported program (and the ONNX model) must give the backbone's features to
1e-5 on a random batch, else nothing is kept.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from selfsup_core.api import WeightsError, core_version

TOLERANCE = 1e-5
PROGRAM = "backbone.pt2"
WEIGHTS = "model.safetensors"
ONNX = "backbone.onnx"


def run(args: argparse.Namespace) -> int:
    """The ``export-hub`` command; prints what was written."""
    report = export_hub(args.checkpoint, args.out_dir, input_size=args.input_size, force=args.force,
                        onnx=not getattr(args, "no_onnx", False))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def _resolve(source: Path) -> Path:
    if source.is_dir():
        from selfsup_core.api import find_latest_checkpoint

        found = find_latest_checkpoint(source)
        if found is None:
            raise WeightsError(f"{source}: a folder without latest.pth or epoch_*.pth; give a checkpoint or a work dir")
        return found
    if not source.is_file():
        raise WeightsError(f"{source}: no such checkpoint or work dir")
    return source


def _input_size(config: dict[str, Any]) -> int:
    """The image side the run trained on: the first ``size`` of a crop/resize in its
    training pipelines, else 224."""
    train = config.get("data", {}).get("train", {})
    pipelines = train.get("pipelines") or [train.get("pipeline") or []]
    for pipeline in pipelines:
        for step in pipeline if isinstance(pipeline, list) else []:
            size = step.get("size") if isinstance(step, dict) else None
            if isinstance(size, int):
                return size
            if isinstance(size, list) and size and isinstance(size[0], int):
                return size[0]
    return 224


def _feature_module(backbone: Any) -> Any:
    """The backbone as a module returning its last output (a tensor, not a tuple)."""
    from torch import nn

    class Features(nn.Module):
        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: Any) -> Any:
            out = self.backbone(x)
            return out[-1] if isinstance(out, (list, tuple)) else out

    return Features(backbone).eval()


def export_hub(checkpoint: str | Path, out_dir: str | Path, *, input_size: int | None = None,
               force: bool = False, onnx: bool = True) -> dict[str, Any]:
    """Write the hub folder for ``checkpoint`` (a file, or a work dir: its latest) into
    ``out_dir``; returns the report (JSON-able). Raises :class:`WeightsError` (one line) on a
    missing config, a damaged checkpoint or an existing non-empty ``out_dir`` without ``force``.
    ``onnx=False`` (``--no-onnx``) skips the ONNX file even where onnx is installed."""
    import torch

    from selfsup_core.api import build, read_toml

    from . import weights as W

    checkpoint, out_dir = _resolve(Path(checkpoint)), Path(out_dir)
    config_file = checkpoint.parent / "config.toml"
    if not config_file.is_file():
        raise WeightsError(f"{checkpoint}: no config.toml next to it (the trainer writes one in the work dir), so the "
                           "backbone's architecture is unknown; export the weights with selfsup-run export instead")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise WeightsError(f"{out_dir}: exists and is not empty; pass --force to write into it, or choose another folder")
    config = read_toml(config_file)
    table = dict(config.get("model", {}).get("backbone") or {})
    if "type" not in table:
        raise WeightsError(f"{config_file}: model.backbone: no backbone table with a type")
    table.pop("init_cfg", None)  # the checkpoint's weights replace any initialisation
    if isinstance(table.get("norm_cfg"), dict) and table["norm_cfg"].get("type") == "SyncBN":
        table["norm_cfg"] = {**table["norm_cfg"], "type": "BN"}  # one process; same parameters and buffers
    state, meta = W.read_state_dict(checkpoint)
    prefix = W.find_backbone_prefix(state) or ""
    kept, _ = W.select_prefix(state, prefix, str(checkpoint))
    backbone = build(table, "backbones", path="model.backbone")
    missing, unexpected = backbone.load_state_dict(kept, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{checkpoint}: the backbone of {config_file.name} does not match the checkpoint's "
                           f"{prefix or 'top-level'} weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    module = _feature_module(backbone)
    channels = int(table.get("in_channels", table.get("in_chans", 3)))
    size = input_size or _input_size(config)
    example = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(example)

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, out_dir / PROGRAM)
    loaded = torch.export.load(out_dir / PROGRAM).module()
    with torch.no_grad():
        difference = float((loaded(example) - expected).abs().max())
    if difference > TOLERANCE:
        (out_dir / PROGRAM).unlink()
        raise WeightsError(f"{PROGRAM}: the exported program's features differ from the backbone's by {difference:.3g}")
    written.append(PROGRAM)
    metadata = {"format": "pt", "source": checkpoint.name, "prefix": prefix, "selfsup_version": core_version,
                "backbone_config": json.dumps(table)}
    W.write_state_dict(dict(backbone.state_dict()), out_dir / WEIGHTS, "safetensors", metadata)
    written.append(WEIGHTS)
    onnx_note = _export_onnx(module, example, expected, out_dir / ONNX) if onnx else "skipped: --no-onnx"
    if onnx_note is None:
        written.append(ONNX)
    timm_arch = _export_timm(kept, out_dir) if _may_be_timm(table) else None
    if timm_arch:
        written += ["timm.safetensors", "config.json"]
    shutil.copyfile(config_file, out_dir / "config.toml")
    written.append("config.toml")
    results = read_results(checkpoint.parent)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint), "out_dir": str(out_dir), "files": written,
        "input": [None, channels, size, size], "output": list(expected.shape[1:]),
        "max_difference": difference, "onnx": onnx_note or "written, checked with onnxruntime",
        "timm_architecture": timm_arch, "epoch": meta.get("epoch"), "results": results,
    }
    (out_dir / "README.md").write_text(model_card(config, table, report), encoding="utf-8")
    written.append("README.md")
    return report


def _export_onnx(module: Any, example: Any, expected: Any, out: Path) -> str | None:
    """Write and check ``backbone.onnx``; None when written, else why it was skipped."""
    import contextlib
    import importlib.util
    import io

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return f"skipped: {' and '.join(missing)} not installed (pip install onnx onnxscript onnxruntime)"
    import numpy as np
    import onnxruntime
    import torch

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torch.onnx prints its steps; keep --json clean
            program = torch.onnx.export(module, (example,), input_names=["images"], output_names=["features"],
                                        dynamo=True, dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}})
            program.save(str(out), external_data=False)
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    except Exception as exc:  # noqa: BLE001 - ONNX is optional: report, keep the rest
        out.unlink(missing_ok=True)
        return f"skipped: ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    difference = float(np.abs(got - expected.numpy()).max())
    if difference > 1e-4:
        out.unlink(missing_ok=True)
        return f"skipped: onnxruntime's features differ by {difference:.3g}"
    return None


def _may_be_timm(table: dict[str, Any]) -> bool:
    """Whether the backbone table can describe a timm architecture at all (a ResNet with the
    standard 3-channel ImageNet stem and widths); a cheap test before the key-name check."""
    return (table.get("type") in ("ResNet", "ResNetV1d") and table.get("in_channels", 3) == 3
            and table.get("base_channels", 64) == 64 and table.get("stem_type", "imagenet") == "imagenet")


def _export_timm(state: dict[str, Any], out_dir: Path) -> str | None:
    """``timm.safetensors`` + ``config.json`` (timm's hub layout) when the weights are a timm
    architecture under timm's key names; else None."""
    from . import weights as W
    from .export import _convert

    try:
        converted, target, _ = _convert(state, "timm")
    except Exception:  # noqa: BLE001 - not a timm architecture: nothing to add
        return None
    arch = target.get("arch")
    if not arch or arch in ("TimmBackbone", "VisionTransformer"):
        return None
    W.write_state_dict(converted, out_dir / "timm.safetensors", "safetensors", {"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": 0}, indent=2), encoding="utf-8")
    return str(arch)


def read_results(work_dir: Path) -> dict[str, Any]:
    """The run's last evaluation scores and last training loss from ``metrics.jsonl`` ({} without it)."""
    path = work_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    results: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("mode") == "eval" and "error" not in record:
            results["eval"] = {k: v for k, v in record.items() if k not in ("mode", "time", "iter", "eval_seconds")}
        elif record.get("mode") == "train" and "loss" in record:
            results["train"] = {"epoch": record.get("epoch"), "iter": record.get("iter"), "loss": record["loss"]}
    return results


def model_card(config: dict[str, Any], backbone: dict[str, Any], report: dict[str, Any]) -> str:
    """The README.md of the folder: what the model is, how it was trained, what it scored, how to load it."""
    model = config.get("model", {})
    data = config.get("data", {})
    runner = config.get("runner", {})
    optimizer = config.get("optimizer", {})
    source = data.get("train", {}).get("data_source", {})
    args = ", ".join(f"{k}={v!r}" for k, v in backbone.items() if k != "type")
    lines = [
        "---", "library_name: pytorch", "tags: [self-supervised, selfsup, image-feature-extraction]", "---", "",
        f"# {model.get('type', 'selfsup')} {backbone['type']} backbone", "",
        f"Self-supervised {model.get('type', '')} pre-training with selfsup {core_version}; exported from "
        f"`{Path(report['checkpoint']).name}` (epoch {report.get('epoch')}).", "",
        "## Pre-training recipe", "",
        f"- algorithm: {model.get('type')}; backbone: {backbone['type']}({args})",
        f"- data: {source.get('type', '?')}"
        + (f" ({source.get('split')})" if source.get("split") else "")
        + f", {data.get('samples_per_gpu', '?')} images per GPU",
        f"- optimizer: {optimizer.get('type', '?')}, lr {optimizer.get('lr', '?')}, "
        f"weight decay {optimizer.get('weight_decay', 0)}; schedule: {config.get('lr_config', {}).get('policy', '?')}",
        f"- epochs: {runner.get('max_epochs', '?')}; seed {config.get('seed', 0)}",
        "- the full resolved config: `config.toml`", "",
        "## Results", "",
    ]
    results = report.get("results") or {}
    if "eval" in results:
        scores = {k: v for k, v in results["eval"].items() if k != "epoch" and not k.startswith("best_")}
        lines.append(f"- after epoch {results['eval'].get('epoch')}: "
                     + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()))
    if "train" in results:
        lines.append(f"- last training loss {results['train']['loss']:.4f} (iteration {results['train']['iter']})")
    if not results:
        lines.append("- no metrics.jsonl in the work dir: no measured results.")
    shape = ", ".join("N" if d is None else str(d) for d in report["input"])
    lines += [
        "", "## Use", "",
        f"Input: float images `({shape})`, normalised as in `config.toml`'s pipeline. Output: the last "
        f"feature map `(N, {', '.join(map(str, report['output']))})`.", "",
        "```python", "import torch", "",
        f"model = torch.export.load(\"{PROGRAM}\").module()   # needs only torch",
        f"features = model(torch.randn(8, {report['input'][1]}, {report['input'][2]}, {report['input'][3]}))",
        "```", "",
        f"Weights alone: `{WEIGHTS}` (key names of selfsup's {backbone['type']}; "
        f"`selfsup_models.build_backbone(\"{backbone['type']}\", ...)` with the arguments above loads them).",
    ]
    if report.get("timm_architecture"):
        lines.append(f"timm: `timm.create_model(\"{report['timm_architecture']}\", num_classes=0)` loads "
                     "`timm.safetensors` (`config.json` names the architecture).")
    lines.append(f"ONNX: {ONNX if report['onnx'].startswith('written') else report['onnx']}.")
    return "\n".join(lines) + "\n"


def format_report(report: dict[str, Any]) -> str:
    """What ``export-hub`` prints."""
    lines = [f"exported {report['checkpoint']} -> {report['out_dir']}",
             f"  files   {', '.join(report['files'])}",
             f"  input   ({', '.join('N' if d is None else str(d) for d in report['input'])}) -> features "
             f"{tuple(report['output'])}; program matches the backbone to {report['max_difference']:.1g}",
             f"  onnx    {report['onnx']}"]
    if report.get("timm_architecture"):
        lines.append(f"  timm    {report['timm_architecture']} (timm.safetensors)")
    return "\n".join(lines)


__all__ = ["export_hub", "format_report", "model_card", "read_results", "run"]
