"""``selfsup-data-convert`` (also ``python -m selfsup_data.convert``): data conversion tools.

``imagelist ROOT -o FILE [--labels [--classes FILE]]``
    Write an ``ImageList`` file (``path [label]`` lines, paths relative to ROOT) for the images
    of a folder tree. ``--labels``: ROOT holds class folders; each line gets the class number
    (sorted folder names, or their order in ``--classes``). Without it every image at any
    depth is listed, unlabelled.

``export [TABLE] [--source NAME] [--root DIR] [--split S] [--set KEY=VALUE ...] -o DIR``
    Write any data source to disk as an ``ImageFolder``: ``DIR/<class name>/<index>.png`` and
    ``DIR/classes.txt`` (class folder names in label order), or flat ``DIR/<index>.png`` for an
    unlabelled source. The source is a TOML inline table (``'{type = "CIFAR10", root = "data"}'``)
    or ``--source`` with options; it is built and validated like a config's ``data_source``.

Nothing existing is overwritten: the output file must not exist (``--force`` replaces it) and
the output folder must be new or empty. Errors print one ``error: ...`` line each; exit status 2.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from selfsup_core.api import atomic_write_text

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]


class ConvertError(Exception):
    """A problem with the user's input; printed as ``error: ...``."""


# -- imagelist --------------------------------------------------------------------------------------
def write_image_list(
    root: str, output: str, labels: bool = False, force: bool = False, classes: str | None = None
) -> tuple[int, int]:
    """Write the list file for the images under ``root``.

    ``classes``: a text file of class folder names in label order (default: sorted names).
    Returns ``(number of images, number of classes)`` (0 classes when unlabelled).
    """
    from .sources.base import resolve_classes
    from .sources.folder import scan_folder

    root = os.path.expanduser(root)
    if classes is not None and not labels:
        raise ConvertError("--classes needs --labels")
    names = resolve_classes("imagelist", classes)
    paths, label_array, classes = scan_folder(root, labelled=labels, classes=names, owner="imagelist")
    if not paths:
        raise ConvertError(f"no image files under {root!r}")
    for path in paths:
        if "\n" in path or "\r" in path:
            raise ConvertError(f"file name {path!r} has a line break, which a list file cannot hold")
        if not labels and (path != path.strip() or len(path.split()) > 1):
            raise ConvertError(
                f"file name {path!r} has white space, which an unlabelled list file cannot hold "
                "(a path with spaces needs a label after it); rename it or use --labels"
            )
    lines = [f"# selfsup ImageList of {os.path.abspath(root)}: paths relative to it\n"]
    if classes:
        lines += [f"# label {i}: {name}\n" for i, name in enumerate(classes)]
    if labels:
        lines += [f"{path} {int(label)}\n" for path, label in zip(paths, label_array)]
    else:
        lines += [f"{path}\n" for path in paths]
    _write_text_atomically(output, "".join(lines), force)
    return len(paths), len(classes or ())


def _write_text_atomically(path: str, text: str, force: bool) -> None:
    path = os.path.expanduser(path)
    if os.path.exists(path) and not force:
        raise ConvertError(f"output {path!r} exists; choose another name or pass --force to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConvertError(f"output folder {folder!r} does not exist")
    atomic_write_text(path, text)


# -- export -------------------------------------------------------------------------------------------
def folder_name(name: str, label: int) -> str:
    """A safe folder name for a class: path separators and control characters become ``_``."""
    safe = re.sub(r"[/\\\x00-\x1f]", "_", name).strip()
    safe = safe.lstrip(".")
    return safe or f"class_{label}"


def build_source(table: dict[str, Any]) -> Any:
    """Build a data source from a ``{type = ..., ...}`` table, validated like a config."""
    from selfsup_core.api import build
    from selfsup_core.api import Config

    config = Config({"data_source": table}, filename="command line")
    return build(table, "data_sources", config=config, path="data_source")


def export_source(source: Any, output: str, limit: int | None = None) -> tuple[int, int]:
    """Write ``source`` as an ImageFolder under ``output`` (PNG files).

    Returns ``(images written, class folders)``.
    """
    import numpy as np

    output = os.path.expanduser(output)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ConvertError(f"output {output!r} exists and is not an empty folder; choose a new one")
    labels = np.asarray(source.get_gt_labels(), dtype=np.int64)
    count = len(source) if limit is None else min(limit, len(source))
    labels = labels[:count]
    labelled = labels >= 0
    if labelled.any() and not labelled.all():
        raise ConvertError("the source mixes labelled and unlabelled samples; an ImageFolder cannot hold both")
    width = max(len(str(max(count - 1, 0))), 5)
    os.makedirs(output, exist_ok=True)
    folders: list[str] = []
    if labelled.all() and count:
        classes = getattr(source, "CLASSES", None)
        num_classes = max(len(classes) if classes is not None else 0, int(labels.max()) + 1)
        digits = len(str(num_classes - 1))
        for label in range(num_classes):
            if classes is not None and label < len(classes):
                folders.append(folder_name(str(classes[label]), label))
            else:
                folders.append(str(label).zfill(digits))
        if len(set(folders)) != len(folders):
            raise ConvertError(f"class names give duplicate folder names: {folders}")
        for name in folders:
            os.makedirs(os.path.join(output, name), exist_ok=True)
        with open(os.path.join(output, "classes.txt"), "w", encoding="utf-8") as fh:
            fh.writelines(f"{name}\n" for name in folders)
    for i in range(count):
        folder = os.path.join(output, folders[labels[i]]) if folders else output
        source.get_img(i).save(os.path.join(folder, f"{i:0{width}d}.png"), format="PNG")
    return count, len(folders)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def source_table(args: argparse.Namespace) -> dict[str, Any]:
    """The data-source table from ``TABLE`` and/or ``--source/--root/--split/--set``."""
    table: dict[str, Any] = {}
    if args.table:
        try:
            table = tomllib.loads(f"t = {args.table}")["t"]
        except tomllib.TOMLDecodeError as exc:
            raise ConvertError(f"TABLE {args.table!r} is not a TOML inline table ({exc})") from None
        if not isinstance(table, dict):
            raise ConvertError(f"TABLE {args.table!r} must be a TOML inline table like '{{type = \"CIFAR10\"}}'")
    if args.source:
        table["type"] = args.source
    if args.root is not None:
        table["root"] = args.root
    if args.split is not None:
        table["split"] = args.split
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConvertError(f"--set {item!r}: expected KEY=VALUE")
        table[key.strip()] = _parse_value(value.strip())
    if "type" not in table:
        raise ConvertError("no data source given: pass a TABLE with a type, or --source NAME")
    return table


# -- command line -----------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="selfsup-data-convert", description="Convert image data for selfsup (list files, ImageFolder export)."
    )
    sub = main_parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("imagelist", help="write an ImageList file for a folder tree")
    p.add_argument("root", help="folder of images (class sub-folders with --labels)")
    p.add_argument("-o", "--output", required=True, help="list file to write")
    p.add_argument("--labels", action="store_true", help="ROOT has class folders: write 'path label' lines")
    p.add_argument("--classes", metavar="FILE",
                   help="class folder names in label order, one per line (e.g. the classes.txt of an export)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p = sub.add_parser("export", help="write a data source to disk as an ImageFolder of PNG files")
    p.add_argument("table", nargs="?", help='data source as a TOML inline table, e.g. \'{type = "MNIST", root = "data"}\'')
    p.add_argument("--source", help="data source type (FashionMNIST, CIFAR10, ...)")
    p.add_argument("--root", help="the source's root argument")
    p.add_argument("--split", help="the source's split argument (train/test)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="another source argument (TOML value)")
    p.add_argument("-o", "--output", required=True, help="folder to create (must be new or empty)")
    p.add_argument("--limit", type=int, help="export only the first N samples")
    return main_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit status (0, or 2 after printing ``error: ...`` lines)."""
    args = parser().parse_args(argv)
    try:
        if args.command == "imagelist":
            count, classes = write_image_list(args.root, args.output, labels=args.labels, force=args.force,
                                              classes=args.classes)
            what = f"{classes} classes" if args.labels else "unlabelled"
            print(f"wrote {count} images ({what}) to {args.output}; read it with "
                  f"ImageList(ann_file={args.output!r}, root={args.root!r})")
        else:
            if args.limit is not None and args.limit < 0:
                raise ConvertError("--limit must be >= 0")
            source = build_source(source_table(args))
            count, classes = export_source(source, args.output, args.limit)
            hint = (f"ImageFolder(root={args.output!r}, classes={os.path.join(args.output, 'classes.txt')!r}) "
                    "(classes.txt keeps the label numbers)" if classes else f"ImageFolder(root={args.output!r})")
            print(f"wrote {count} images in {classes or 'no'} class folders to {args.output}; read them back with {hint}")
    except Exception as exc:  # noqa: BLE001 - every input problem ends as one line
        from selfsup_core.api import SelfSupError

        if not isinstance(exc, (ConvertError, SelfSupError, OSError, ValueError)) or os.environ.get("SELFSUP_DEBUG"):
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
