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

from .. import __version__
from . import weights as W
from .weights import WeightsError


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

    ``to``: ``raw`` (the backbone's own key names), ``torchvision`` (ResNets and ViTs; checked
    against torchvision's models, the classifier ``fc`` is left out, ViT keys renamed) or ``timm`` (ResNets
    and ViTs; checked against timm's models where timm is installed). ``prefix``: where the
    backbone's keys are (default: :data:`~selfsup_core.tools.weights.BACKBONE_PREFIXES`,
    the first present; a file with none of them is taken as a bare backbone). ``with_hash``:
    name the file ``<stem>-<sha256[:8]><suffix>`` as torchvision's releases are.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if checkpoint.is_dir():
        from ..engine.checkpoint import find_latest

        found = find_latest(checkpoint)
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
    kept, report["target"], converted_drops = _convert(kept, to)
    dropped += converted_drops
    if not kept:
        raise WeightsError(f"{checkpoint}: nothing is left to export under prefix {prefix!r}")
    report.update(kept=len(kept), parameters=W.count_parameters(kept), dropped=dropped)
    backbone = _run_backbone_table(checkpoint) if prefix == "backbone." else None
    if backbone is not None:
        report["backbone_config"] = backbone
    metadata = {"format": "pt", "source": checkpoint.name, "prefix": prefix, "key_names": to,
                "selfsup_version": __version__}
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
    from ..engine.checkpoint import list_epoch_checkpoints

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
    from ..config import read_toml
    from ..errors import ConfigError

    config = checkpoint.parent / "config.toml"
    if not config.is_file():
        return None
    try:
        backbone = read_toml(config).get("model", {}).get("backbone")
    except ConfigError:
        return None
    return dict(backbone) if isinstance(backbone, dict) else None


def _convert(state: W.StateDict, to: str) -> tuple[W.StateDict, dict[str, Any], list[dict[str, Any]]]:
    """Check (and trim) a backbone state dict for ``to``: ``(state, target report, drops)``."""
    drops: list[dict[str, Any]] = []
    if to == "raw":
        return state, {"library": None}, drops
    wrapped = all(k.startswith(TIMM_BACKBONE_PREFIX) for k in state)
    if wrapped:  # a TimmBackbone: timm's own names under timm_model.
        state = {k[len(TIMM_BACKBONE_PREFIX):]: v for k, v in state.items()}
        if to == "timm" and not (W.is_resnet(state) or W.is_vit(state)):
            return state, {"library": "timm", "arch": "TimmBackbone"}, drops
    if W.is_resnet(state):
        fc = [k for k in state if k.startswith("fc.")]
        if fc:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            drops.append({"keys": "fc.*", "count": len(fc), "reason": W.drop_reason("fc")})
        match = W.match_torchvision_resnet(state)
        target = {"library": to, **match}
        if to == "timm":
            target["checked_with_timm"] = _check_timm_resnet(state, match["arch"])
        return state, target, drops
    if W.is_vit(state):
        extra = W.timm_vit_differences(state)
        if extra:
            state = {k: v for k, v in state.items() if k not in extra}
            drops.append({"keys": ", ".join(extra), "count": len(extra),
                          "reason": f"masked-image-modelling token; {to}'s VisionTransformer has none"})
        if to == "timm":
            return state, {"library": "timm", "arch": "VisionTransformer", **_check_timm_vit(state)}, drops
        converted = W.vit_to_torchvision(state)
        return converted.pop("state"), {"library": "torchvision", **converted}, drops
    sample = ", ".join(list(state)[:3])
    raise WeightsError(f"--to {to}: this backbone is not a ResNet or ViT (keys {sample}, ...), so it has no {to} "
                       "key mapping; use --to raw")


#: Where :class:`TimmBackbone` keeps the timm model; its keys below are timm's own.
TIMM_BACKBONE_PREFIX = "timm_model."


def _check_timm_resnet(state: W.StateDict, arch: str) -> bool | None:
    """Whether timm's ``arch`` has exactly these key names (None: timm is not installed)."""
    try:
        import timm
        import torch
    except ImportError:
        return None
    with torch.device("meta"):
        names = {k for k in timm.create_model(arch, pretrained=False).state_dict() if not k.startswith("fc.")}
    if names != set(state):
        raise WeightsError(f"--to timm: timm's {arch} has other key names than this backbone "
                           f"(first differences: {', '.join(sorted(names ^ set(state))[:4])})")
    return True


def _check_timm_vit(state: W.StateDict) -> dict[str, Any]:
    """Build timm's ``VisionTransformer`` with this state dict's sizes (meta device) and
    compare key names and shapes; ``{"checked_with_timm": None}`` without timm."""
    try:
        import torch
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return {"checked_with_timm": None}
    proj = state["patch_embed.proj.weight"]
    embed, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    has_cls = "cls_token" in state
    tokens = int(state["pos_embed"].shape[1]) if "pos_embed" in state else 0
    grid = int(round((tokens - int(has_cls)) ** 0.5))
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    with torch.device("meta"):
        reference = VisionTransformer(
            img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=embed, depth=depth, num_heads=1,
            mlp_ratio=hidden / embed, qkv_bias="blocks.0.attn.qkv.bias" in state, class_token=has_cls,
            global_pool="token" if has_cls else "avg", num_classes=0,
            fc_norm=False if has_cls else None,
        ).state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    shapes = [f"{k}: {tuple(state[k].shape)} here, {tuple(v.shape)} in timm" for k, v in reference.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise WeightsError("--to timm: timm's VisionTransformer does not take these weights as they are: "
                           + "; ".join(p for p in (f"missing {', '.join(missing[:4])}" if missing else "",
                                                   f"unexpected {', '.join(unexpected[:4])}" if unexpected else "",
                                                   "; ".join(shapes[:2])) if p))
    return {"checked_with_timm": True, "exact": True, "img_size": grid * patch, "patch_size": patch,
            "embed_dim": embed, "depth": depth}


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
    if target.get("arch") == "TimmBackbone":
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
        from ..config import dump_toml

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
    dialect = _dialect(state, source)
    if dialect == "torchvision-vit":
        heads = [k for k in state if k.startswith("heads.")]
        if heads:
            dropped.append({"keys": "heads.*", "count": len(heads), "reason": "classifier (the backbone has none)"})
        state = W.vit_from_torchvision(state)
    classifier = {"resnet": ("fc.",), "timm-vit": ("head.", "head_dist."), "mmcls-vit": ("head.",)}.get(dialect, ())
    removed = [k for k in state if k.startswith(classifier)] if classifier else []
    if removed:
        state = {k: v for k, v in state.items() if k not in removed}
        dropped.append({"keys": ", ".join(sorted({k.rsplit(".", 1)[0] + ".*" for k in removed})),
                        "count": len(removed), "reason": "classifier (the backbone has none)"})
    if not state:
        raise WeightsError(f"{weights}: nothing is left after dropping the classifier")
    report: dict[str, Any] = {"weights": str(weights), "out": str(out), "format": fmt, "dialect": dialect,
                              "prefix": prefix or "", "kept": len(state), "parameters": W.count_parameters(state),
                              "dropped": dropped}
    if dialect == "resnet":
        try:
            report["arch"] = W.match_torchvision_resnet(state)["arch"]
        except WeightsError:
            report["arch"] = None
    W.write_state_dict(state, out, fmt, {"format": "pt", "source": weights.name, "dialect": dialect,
                                        "selfsup_version": __version__})
    return report


def _dialect(state: W.StateDict, source: str) -> str:
    """``resnet``, ``timm-vit``, ``torchvision-vit``, ``mmcls-vit`` or ``other``; ``source`` only checks it."""
    if W.is_resnet(state):
        found = "resnet"
    elif W.is_vit(state):
        found = "timm-vit"
    elif W.is_torchvision_vit(state):
        found = "torchvision-vit"
    elif "patch_embed.projection.weight" in state:
        found = "mmcls-vit"
    else:
        found = "other"
    expected = {"torchvision": ("resnet", "torchvision-vit"), "timm": ("resnet", "timm-vit"), "mmcls": ("resnet", "mmcls-vit")}
    if source != "auto" and found not in expected[source]:
        raise WeightsError(f"--from {source}: these weights do not look like {source} ones (keys "
                           f"{', '.join(list(state)[:3])}, ...); try --from auto")
    return found


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
