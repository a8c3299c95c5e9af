"""``selfsup-run export`` and ``selfsup-run import-weights``.

``export CKPT OUT``: the online backbone of a training checkpoint (selfsup, MMSelfSup or
OpenSelfSup; ``backbone.`` / ``encoder_q.0.`` / ``online_net.0.``, never the momentum copy)
as a plain state dict or safetensors file whose keys load into the backbone class, and with
``--to torchvision`` / ``--to timm`` checked against those libraries' models::

    selfsup-run export work_dirs/mocov2/latest.pth r50.pth --to torchvision
    >>> model = torchvision.models.resnet50()
    >>> model.load_state_dict(torch.load("r50.pth"), strict=False)  # missing: fc.weight, fc.bias only

``import-weights WEIGHTS OUT``: the reverse. torchvision, timm or mmcls weights (a ``.pth``
or a hub ``.safetensors``) become a backbone checkpoint without the classifier, for
``init_cfg = {type = "Pretrained", checkpoint = "OUT"}`` on ``[model.backbone]``.

Both print what was kept and what was dropped, and why; ``--json`` prints it as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from selfsup_core.api import WeightsError, core_version

from ..layouts import convert_backbone
from . import weights as W


def run(args: argparse.Namespace) -> int:
    """The ``export`` and ``import-weights`` commands; returns the exit status."""
    if args.command == "export":
        report = export_backbone(args.checkpoint, args.out, fmt=args.format, to=args.to, prefix=args.prefix,
                                 force=args.force, with_hash=getattr(args, "hash", False),
                                 fallback=getattr(args, "fallback", False))
        text = format_export_report(report)
    else:
        report = import_weights(args.weights, args.out, source=args.source, fmt=args.format, prefix=args.prefix,
                                force=args.force)
        text = format_import_report(report)
    print(json.dumps(report, indent=2) if args.json else text)
    return 0


# -- export ---------------------------------------------------------------------------------
def export_backbone(
    checkpoint: str | Path,
    out: str | Path,
    *,
    fmt: str | None = None,
    to: str = "raw",
    prefix: str | None = None,
    force: bool = False,
    with_hash: bool = False,
    fallback: bool = False,
) -> dict[str, Any]:
    """Write the backbone of ``checkpoint`` (a file, or a work dir: its latest checkpoint) to
    ``out``; returns the report (a JSON-able dict).

    A damaged checkpoint (unreadable, or its stored checksum does not match) is refused with
    one line. ``fallback``: then export the newest intact ``epoch_N.pth`` of its folder
    instead; the report's ``fallback_from`` names the damaged file and why it was skipped.

    ``to``: ``raw`` (the backbone's own key names), ``torchvision`` or ``timm``: converted by
    the ``selfsup_convert_backbone`` hook (selfsup-models: ResNets and ViTs, checked against
    those libraries' models; the classifier ``fc`` is left out, ViT keys renamed). ``prefix``: where the
    backbone's keys are (default: :data:`~selfsup_models.tools.weights.BACKBONE_PREFIXES`,
    the first present; a file with none of them is taken as a bare backbone). ``with_hash``:
    name the file ``<stem>-<sha256[:8]><suffix>`` as torchvision's releases are.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if checkpoint.is_dir():
        from selfsup_core.api import find_latest_checkpoint

        found = find_latest_checkpoint(checkpoint)
        if found is None:
            raise WeightsError(f"{checkpoint}: a folder without latest.pth or epoch_*.pth; give a checkpoint file")
        checkpoint = found
    fmt = W.output_format(out, fmt)
    W.check_writable(out, [checkpoint], force)
    state, meta, used, skipped = _read_checkpoint(checkpoint, fallback)
    fallback_from = {"checkpoint": str(checkpoint), "skipped": skipped} if used != checkpoint else None
    checkpoint = used
    if prefix is None:
        prefix = W.find_backbone_prefix(state) or ""
    kept, dropped_keys = W.select_prefix(state, prefix, str(checkpoint))
    dropped = [{"keys": f"{group}.*" if any("." in k for k in keys) else group, "count": len(keys),
                "reason": W.drop_reason(group)} for group, keys in dropped_keys.items()]
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint), "out": str(out), "format": fmt, "to": to, "prefix": prefix,
        "epoch": meta.get("epoch"), "iter": meta.get("iter"),
    }
    if fallback_from is not None:
        report["fallback_from"] = fallback_from
    backbone = _run_backbone_table(checkpoint) if prefix == "backbone." else None
    kept, report["target"], converted_drops = _convert(kept, to, backbone)
    dropped += converted_drops
    if not kept:
        raise WeightsError(f"{checkpoint}: nothing is left to export under prefix {prefix!r}")
    report.update(kept=len(kept), parameters=W.count_parameters(kept), dropped=dropped)
    if backbone is not None:
        report["backbone_config"] = backbone
    metadata = {"format": "pt", "source": checkpoint.name, "prefix": prefix, "key_names": to,
                "selfsup_version": core_version}
    if backbone is not None:
        metadata["backbone_config"] = json.dumps(backbone)
    if report["target"].get("arch"):
        metadata["arch"] = report["target"]["arch"]
    W.write_state_dict(kept, out, fmt, metadata)
    if with_hash:
        report["out"], report["sha256"] = _append_hash(out, force)
    return report


def _read_checkpoint(checkpoint: Path, fallback: bool) -> tuple[W.StateDict, dict[str, Any], Path, list[dict[str, str]]]:
    """Read ``checkpoint``: ``(state, meta, the file read, [{"checkpoint", "reason"} skipped])``.

    A damaged file raises :class:`WeightsError`, unless ``fallback``: then the folder's
    ``epoch_N.pth`` files are tried newest first (those that are the same file, e.g. the hard
    link behind ``latest.pth``, are skipped with it) and the first intact one is read."""
    try:
        state, meta = W.read_state_dict(checkpoint)
        return state, meta, checkpoint, []
    except WeightsError as exc:
        first = exc
    from selfsup_core.api import list_epoch_checkpoints

    older = [p for p in reversed(list_epoch_checkpoints(checkpoint.parent)) if p != checkpoint]
    if not fallback:
        hint = (f"; or pass --fallback to export the newest intact epoch_N.pth of {checkpoint.parent} instead"
                if older else "")
        raise WeightsError(f"{first}{hint}") from first
    skipped = [{"checkpoint": str(checkpoint), "reason": _reason(first, checkpoint)}]
    for candidate in older:
        if _same_file(candidate, checkpoint):
            skipped.append({"checkpoint": str(candidate), "reason": f"the same file as {checkpoint.name}"})
            continue
        try:
            state, meta = W.read_state_dict(candidate)
        except WeightsError as exc:
            skipped.append({"checkpoint": str(candidate), "reason": _reason(exc, candidate)})
            continue
        return state, meta, candidate, skipped
    raise WeightsError(f"{first}; --fallback: no intact epoch_N.pth in {checkpoint.parent} either "
                       f"({len(skipped) - 1} tried)") from first


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _reason(exc: BaseException, path: Path) -> str:
    """An error message without its leading ``"<path>: "``."""
    return str(exc).removeprefix(f"{path}: ")


def _append_hash(out: Path, force: bool) -> tuple[str, str]:
    """Rename ``out`` to ``<stem>-<first 8 hex digits of its SHA-256><suffix>``, the names
    ``torch.hub.load_state_dict_from_url(..., check_hash=True)`` verifies."""
    import hashlib

    digest = hashlib.sha256()
    with open(out, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    target = out.with_name(f"{out.stem}-{sha[:8]}{out.suffix}")
    if target.exists() and not force:
        out.unlink()
        raise WeightsError(f"{target}: exists; pass --force to overwrite it, or choose another path")
    os.replace(out, target)
    return str(target), sha


def _run_backbone_table(checkpoint: Path) -> dict[str, Any] | None:
    """The ``[model.backbone]`` table of the run that wrote ``checkpoint`` (its work dir's
    ``config.toml``, which the trainer writes), or None: what builds the exported weights."""
    from selfsup_core.api import ConfigError, read_toml

    config = checkpoint.parent / "config.toml"
    if not config.is_file():
        return None
    try:
        backbone = read_toml(config).get("model", {}).get("backbone")
    except ConfigError:
        return None
    return dict(backbone) if isinstance(backbone, dict) else None


def _convert(state: W.StateDict, to: str, backbone: dict[str, Any] | None = None
             ) -> tuple[W.StateDict, dict[str, Any], list[dict[str, Any]]]:
    """Check (and trim) a backbone state dict for ``to``: ``(state, target report, drops)``;
    ``torchvision`` / ``timm`` through the ``selfsup_convert_backbone`` hook (``backbone``: the
    run's ``[model.backbone]`` table when known)."""
    if to == "raw":
        return state, {"library": None}, []
    converted = convert_backbone(state, "export", to, backbone)
    return dict(converted.state), dict(converted.details), list(converted.dropped)


def format_export_report(report: dict[str, Any]) -> str:
    """The human-readable export report, a few lines."""
    where = f" (epoch {report['epoch']}, iteration {report['iter']})" if report.get("epoch") is not None else ""
    names = {"raw": "the backbone's own key names", "torchvision": "torchvision key names",
             "timm": "timm key names"}[report["to"]]
    lines = []
    if report.get("fallback_from"):
        skipped = report["fallback_from"]["skipped"]
        lines += [f"--fallback: skipped {s['checkpoint']}: {s['reason']}" for s in skipped]
        lines.append(f"--fallback: exporting from {report['checkpoint']} instead")
    lines += [f"exported {report['kept']} tensors ({report['parameters']:,} parameters) under "
             f"{report['prefix']!r} of {report['checkpoint']}{where}",
             f"  -> {report['out']} ({report['format']}, {names})"]
    target = report["target"]
    if target.get("note"):  # a conversion that describes itself (selfsup_convert_backbone)
        lines.append(f"  {target['note']}")
    elif target.get("arch") == "TimmBackbone":
        lines.append("  a TimmBackbone: timm's own key names; load into timm.create_model(<its model_name>, "
                     "num_classes=0) with strict=True")
    elif target.get("arch") and report["to"] in ("torchvision", "timm") and target["arch"] != "VisionTransformer":
        if target.get("exact"):
            lines.append(f"  matches {report['to']} {target['arch']} key for key and shape for shape: "
                         f"load_state_dict(weights, strict=False) leaves only fc.weight, fc.bias missing")
        else:
            differences = target["shape_differences"]
            lines.append(f"  key names match {report['to']} {target['arch']}; {len(differences)} shapes differ "
                         f"where the config changed the network (build the {report['to']} model to match), e.g.:")
            library = f" in {report['to']} "
            lines += ["    " + d.replace(" in torchvision ", library) for d in differences[:3]]
        if target.get("checked_with_timm") is None and report["to"] == "timm":
            lines.append("  (timm is not installed: checked against torchvision, whose ResNet names timm shares)")
    elif target.get("arch") == "VisionTransformer" and report["to"] == "torchvision":
        lines.append(f"  matches torchvision.models.VisionTransformer(image_size={target['image_size']}, "
                     f"patch_size={target['patch_size']}, num_layers={target['num_layers']}, "
                     f"hidden_dim={target['hidden_dim']}, mlp_dim={target['mlp_dim']}, num_heads=...): "
                     "load_state_dict(weights, strict=False) leaves only heads.* missing")
    elif target.get("arch") == "VisionTransformer":
        lines.append("  matches timm's VisionTransformer" if target.get("checked_with_timm")
                     else "  timm key names (timm is not installed, so not checked against it)")
    for drop in report["dropped"]:
        lines.append(f"  dropped {drop['keys']} ({_tensors(drop['count'])}): {drop['reason']}")
    if report.get("backbone_config"):
        from selfsup_core.api import dump_toml

        text = dump_toml({"model": {"backbone": report["backbone_config"]}}).strip()
        table = text.removeprefix("[model]").strip().replace("\n", "\n    ")
        lines.append(f"  the run built this backbone from (its config.toml):\n    {table}")
    return "\n".join(lines)


def _tensors(count: int) -> str:
    return f"{count} tensor" if count == 1 else f"{count} tensors"


# -- import ---------------------------------------------------------------------------------
def import_weights(
    weights: str | Path,
    out: str | Path,
    *,
    source: str = "auto",
    fmt: str | None = None,
    prefix: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Turn torchvision / timm / mmcls weights into a backbone checkpoint at ``out``.

    The classifier (``fc.*`` of ResNets, ``head.*`` / ``heads.*`` of ViTs, mmcls ``head.``/``neck.``)
    is dropped and a ``backbone.`` prefix removed. ResNet key names are torchvision's (and
    timm's) in selfsup, ViT names timm's: torchvision ViT names are renamed to them; mmcls
    ViT names are kept, the ViT backbone converts them when it loads. Returns the report.
    """
    weights, out = Path(weights), Path(out)
    fmt = W.output_format(out, fmt)
    W.check_writable(out, [weights], force)
    state, _ = W.read_state_dict(weights)
    dropped: list[dict[str, Any]] = []
    if prefix is None and any(k.startswith("backbone.") for k in state):
        prefix = "backbone."
    if prefix:
        state, others = W.select_prefix(state, prefix, str(weights))
        dropped += [{"keys": f"{g}.*", "count": len(k), "reason": "not under the backbone prefix " + repr(prefix)}
                    for g, k in others.items()]
    converted = convert_backbone(state, "import", source, None, required=source != "auto")
    details: dict[str, Any] = {"dialect": "other"}
    if converted is not None:  # else weights of an architecture no plugin knows: written as they are
        state, details = dict(converted.state), dict(converted.details)
        dropped += converted.dropped
    if not state:
        raise WeightsError(f"{weights}: nothing is left after dropping the classifier")
    dialect = details.pop("dialect")
    report: dict[str, Any] = {"weights": str(weights), "out": str(out), "format": fmt, "dialect": dialect,
                              "prefix": prefix or "", "kept": len(state), "parameters": W.count_parameters(state),
                              "dropped": dropped, **details}
    W.write_state_dict(state, out, fmt, {"format": "pt", "source": weights.name, "dialect": dialect,
                                        "selfsup_version": core_version})
    return report


def format_import_report(report: dict[str, Any]) -> str:
    """The human-readable import report, ending with the ``init_cfg`` to use."""
    kind = {"resnet": f"a ResNet ({report.get('arch') or 'torchvision/timm key names'})",
            "timm-vit": "a ViT with timm key names", "torchvision-vit": "a torchvision ViT (renamed to timm names)",
            "mmcls-vit": "a ViT with mmcls key names (converted on load)",
            "other": "weights of an architecture not recognised (written as they are)"}[report["dialect"]]
    lines = [f"imported {report['kept']} tensors ({report['parameters']:,} parameters) of {kind} from "
             f"{report['weights']}", f"  -> {report['out']} ({report['format']})"]
    for drop in report["dropped"]:
        lines.append(f"  dropped {drop['keys']} ({_tensors(drop['count'])}): {drop['reason']}")
    lines += ["use it in a config:", "  [model.backbone]",
              f"  init_cfg = {{ type = \"Pretrained\", checkpoint = {json.dumps(report['out'])} }}"]
    return "\n".join(lines)


__all__ = ["export_backbone", "format_export_report", "format_import_report", "import_weights", "run"]
