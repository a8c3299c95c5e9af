"""The ``export``, ``import-weights``, ``export-hub`` and ``count-params`` sub-commands of
``selfsup-run`` (registered through ``selfsup_register_commands``).

Loaded by every ``selfsup-run`` call, ``--help`` included: it declares arguments only and
imports a command's module when the command runs.
"""
from __future__ import annotations

import argparse
import importlib

from selfsup_core.api import add_config_arguments, hookimpl

#: command -> the module of :mod:`selfsup_models.tools` whose ``run(args) -> int`` runs it
MODULES = {"export": "export", "import-weights": "export", "export-hub": "export_hub", "count-params": "count_params"}


def run(args: argparse.Namespace) -> int:
    """Run the parsed command (``args.command``) with its module's ``run``."""
    module = importlib.import_module(f"{__package__}.{MODULES[args.command]}")
    return int(module.run(args))


@hookimpl
def selfsup_register_commands(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="write the backbone weights of a training checkpoint (online encoder) for downstream code"
    )
    export.add_argument("checkpoint", metavar="CKPT", help="a training checkpoint (ours, MMSelfSup or OpenSelfSup) or a work dir (its latest)")
    export.add_argument("out", metavar="OUT", help="the weights file to write (.pth or .safetensors)")
    export.add_argument("--format", choices=("pth", "safetensors"),
                        help="file format (default: from OUT's suffix, else pth)")
    export.add_argument("--to", choices=("raw", "torchvision", "timm"), default="raw",
                        help="key names: raw (the backbone's own), torchvision or timm (checked; default raw)")
    export.add_argument("--prefix", metavar="P",
                        help="the backbone's key prefix in CKPT (default: found, e.g. 'backbone.', 'encoder_q.0.')")
    export.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    export.add_argument("--hash", action="store_true",
                        help="append the first 8 hex digits of the file's SHA-256 to its name (torch.hub's check_hash)")
    export.add_argument("--fallback", action="store_true",
                        help="if CKPT is damaged, export the newest intact epoch_N.pth of its folder instead (said so)")
    export.add_argument("--json", action="store_true", help="print the report as JSON")

    imported = commands.add_parser(
        "import-weights", help="turn torchvision/timm/mmcls weights into a backbone checkpoint for init_cfg Pretrained"
    )
    imported.add_argument("weights", metavar="WEIGHTS", help="a .pth/.pt/.bin or .safetensors state dict")
    imported.add_argument("out", metavar="OUT", help="the backbone checkpoint to write (.pth or .safetensors)")
    imported.add_argument("--from", dest="source", choices=("auto", "torchvision", "timm", "mmcls"), default="auto",
                          help="the key-name dialect of WEIGHTS (default: auto)")
    imported.add_argument("--format", choices=("pth", "safetensors"),
                          help="file format (default: from OUT's suffix, else pth)")
    imported.add_argument("--prefix", metavar="P", help="keep only keys under P and strip it (e.g. 'backbone.')")
    imported.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    imported.add_argument("--json", action="store_true", help="print the report as JSON")

    count = commands.add_parser("count-params", help="count the parameters of CONFIG's model, per component")
    add_config_arguments(count)
    count.add_argument("--depth", type=int, default=1, metavar="N", help="module-tree depth of the table (default 1)")
    count.add_argument("--json", action="store_true", help="print JSON instead of a table")

    hub = commands.add_parser("export-hub", help="a folder for a model hub: torch.export program, safetensors, "
                                                 "config, model card (ONNX if onnx is installed)")
    hub.add_argument("checkpoint", metavar="CKPT", help="a training checkpoint or a work dir (its latest)")
    hub.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write")
    hub.add_argument("--input-size", type=int, metavar="S", help="image side of the example input (default: the config's)")
    hub.add_argument("--force", action="store_true", help="write into an existing non-empty OUT_DIR")
    hub.add_argument("--no-onnx", action="store_true", help="skip backbone.onnx even where onnx is installed")
    hub.add_argument("--json", action="store_true", help="print the report as JSON")

    for parser in (export, imported, count, hub):
        parser.set_defaults(selfsup_run=run)
