"""``TSNE``: a PNG map of test features embedded in 2-d by t-SNE, coloured by class.

scikit-learn (t-SNE) and matplotlib (the plot) are an optional extra::

    pip install 'selfsup-eval[tsne]'

They are imported when :meth:`TSNE.evaluate` runs, never when this module is imported.
The plot is drawn with matplotlib's Agg canvas on a private :class:`~matplotlib.figure.Figure`
(no pyplot), so the global backend and pyplot's figures of other code are left alone.

Under torchrun every process extracts its shard of the features (extraction is collective);
only the main process runs t-SNE and writes the PNG, and every process returns the same
results once it is written.
"""
from __future__ import annotations

import importlib
import inspect
import math
from pathlib import Path
from typing import Any

import torch

from selfsup_core.api import SelfSupError, atomic_write, dist

from .evaluation import SPLITS, EvalContext

from .features import FEATURES, POOLS, check_choice, extract, require_labels

INITS = ("pca", "random")
FIGSIZE = (8.0, 6.0)  # inches; the PNG is FIGSIZE * dpi pixels
MAX_LEGEND_CLASSES = 20  # more classes: a continuous colormap and no legend
_EXTRA = "pip install 'selfsup-eval[tsne]'"


def _positive(owner: str, name: str, value: Any, kind: type, minimum: float, strict: bool = False) -> None:
    """A ValueError unless ``value`` is a ``kind`` (bools refused) >= ``minimum`` (> when strict)."""
    types = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) or not isinstance(value, types):
        raise ValueError(f"{owner}: {name} must be {kind.__name__}, got {value!r}")
    if not math.isfinite(value) or (value <= minimum if strict else value < minimum):
        raise ValueError(f"{owner}: {name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


def load_backends() -> tuple[Any, Any, Any]:
    """``(sklearn.manifold.TSNE, matplotlib.figure.Figure, FigureCanvasAgg)``, or a
    SelfSupError naming the missing package(s) and the extra that installs them."""
    found: dict[str, Any] = {}
    missing = []
    for package, module in (("scikit-learn", "sklearn.manifold"), ("matplotlib", "matplotlib.figure"),
                            ("matplotlib", "matplotlib.backends.backend_agg")):
        try:
            found[module] = importlib.import_module(module)
        except ImportError:
            if package not in missing:
                missing.append(package)
    if missing:
        raise SelfSupError(f"TSNE needs scikit-learn and matplotlib, which are not installed "
                           f"({' and '.join(missing)} missing): {_EXTRA}")
    return (found["sklearn.manifold"].TSNE, found["matplotlib.figure"].Figure,
            found["matplotlib.backends.backend_agg"].FigureCanvasAgg)


def iterations_keyword(tsne_class: Any) -> str:
    """The name scikit-learn's TSNE gives its iteration count: ``max_iter`` (1.5 and later)
    or ``n_iter`` (before)."""
    try:
        parameters = inspect.signature(tsne_class).parameters
    except (TypeError, ValueError):
        return "max_iter"
    return "max_iter" if "max_iter" in parameters else "n_iter"


def subsample(count: int, num_samples: int, seed: int) -> torch.Tensor:
    """Sorted positions of a random subset of ``num_samples`` of ``count`` items (all of them,
    in order, when there are no more than that); the same for the same ``seed``."""
    if count <= num_samples:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:num_samples].sort().values


def effective_perplexity(perplexity: float, count: int) -> float:
    """``perplexity`` capped at ``(count - 1) / 3``: t-SNE looks at ``3 * perplexity``
    neighbours of each point, and scikit-learn refuses a perplexity >= the number of points."""
    return min(float(perplexity), (count - 1) / 3)


def class_names(dataset: Any) -> tuple[str, ...] | None:
    """Class names indexed by label: ``CLASSES`` of the dataset or of its ``data_source``."""
    for owner in (dataset, getattr(dataset, "data_source", None)):
        names = getattr(owner, "CLASSES", None) if owner is not None else None
        if names is not None and not isinstance(names, str):
            try:
                return tuple(str(name) for name in names)
            except TypeError:
                continue
    return None


class TSNE:
    """A t-SNE map of the ``split`` features, saved as a PNG coloured by class.

    Args:
        split: which ``[evaluation.<split>]`` dataset to embed (``"test"`` or ``"train"``).
        num_samples: embed a random subset of this many points (seeded by the run's seed);
            all of them when the dataset is smaller. t-SNE is quadratic-ish in time.
        perplexity: the t-SNE perplexity; capped at ``(points - 1) / 3`` for small sets.
        max_iter: optimisation iterations (>= 250); passed to scikit-learn as ``max_iter``
            or, before scikit-learn 1.5, ``n_iter``.
        init: ``"pca"`` or ``"random"`` initial embedding.
        feature, pool: which features (see :mod:`selfsup_eval.features`).
        normalize: L2-normalise the features before t-SNE.
        point_size: marker area of a point, in points squared.
        dpi: resolution of the PNG (it is ``8 x 6`` inches).
        out: where to write the PNG; ``{tag}`` in it is replaced by the evaluation's tag
            (``epoch_10``) and a relative path is taken under the work directory. Default:
            ``<work_dir>/tsne_<tag>.png``.

    Results: ``tsne_png`` (the path, as a string) and ``tsne_points`` (how many points).
    """

    def __init__(
        self,
        split: str = "test",
        num_samples: int = 5000,
        perplexity: float = 30.0,
        max_iter: int = 1000,
        init: str = "pca",
        feature: str = "extract",
        pool: str = "avg",
        normalize: bool = True,
        point_size: float = 4.0,
        dpi: int = 150,
        out: str | None = None,
    ) -> None:
        owner = type(self).__name__
        self.split = check_choice(owner, "split", split, SPLITS)
        _positive(owner, "num_samples", num_samples, int, 2)
        _positive(owner, "perplexity", perplexity, float, 0, strict=True)
        _positive(owner, "max_iter", max_iter, int, 250)
        self.init = check_choice(owner, "init", init, INITS)
        self.feature = check_choice(owner, "feature", feature, FEATURES)
        self.pool = check_choice(owner, "pool", pool, POOLS)
        if not isinstance(normalize, bool):
            raise ValueError(f"{owner}: normalize must be true or false, got {normalize!r}")
        _positive(owner, "point_size", point_size, float, 0, strict=True)
        _positive(owner, "dpi", dpi, int, 10)
        if out is not None and (not isinstance(out, str) or not out.strip()):
            raise ValueError(f"{owner}: out must be a file path (e.g. 'tsne_{{tag}}.png') or left out, got {out!r}")
        self.num_samples = num_samples
        self.perplexity = float(perplexity)
        self.max_iter = max_iter
        self.normalize = normalize
        self.point_size = float(point_size)
        self.dpi = dpi
        self.out = out

    def output_path(self, context: EvalContext) -> Path:
        """Where the PNG goes for ``context`` (see ``out``)."""
        if self.out is None:
            return Path(context.work_dir) / f"tsne_{context.tag}.png"
        path = Path(self.out.replace("{tag}", context.tag))
        return path if path.is_absolute() else Path(context.work_dir) / path

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        """Extract the features, embed a subset with t-SNE and plot it (main process);
        returns ``{"tsne_png": path, "tsne_points": count}`` on every process."""
        tsne_class, figure_class, canvas_class = load_backends()  # every rank: fail before extracting
        owner = type(self).__name__
        features = extract(context, self.split, feature=self.feature, pool=self.pool)
        labels = require_labels(features, self.split, owner)
        if len(features) < 2:
            raise ValueError(f"{owner}: the [evaluation.{self.split}] dataset has {len(features)} sample; "
                             "t-SNE needs at least 2")
        chosen = subsample(len(features), self.num_samples, context.seed)
        path = self.output_path(context)
        count = int(chosen.numel())
        if context.rank == 0:
            points = features.features.detach().float().cpu()[chosen]
            if self.normalize:
                points = torch.nn.functional.normalize(points, dim=1)
            embedding = self._embed(tsne_class, points, context.seed, context)
            names = class_names(context.dataset(self.split))
            title = f"t-SNE of {count} {self.split} features: {type(context.model).__name__} ({context.tag})"
            figure = self._plot(figure_class, embedding, labels.cpu()[chosen].numpy(), names, title)
            _write_png(canvas_class, figure, path, self.dpi)
            context.message(f"t-SNE of {count} {self.split} features -> {path}")
        dist.barrier()
        return {"tsne_png": str(path), "tsne_points": count}

    def _embed(self, tsne_class: Any, points: torch.Tensor, seed: int, context: EvalContext) -> Any:
        """The ``(N, 2)`` t-SNE embedding (a numpy array) of ``points``."""
        count = int(points.shape[0])
        perplexity = effective_perplexity(self.perplexity, count)
        if perplexity < self.perplexity:
            context.message(f"TSNE: perplexity {self.perplexity:g} is too high for {count} points; "
                            f"using {perplexity:.3g}")
        tsne = tsne_class(n_components=2, perplexity=perplexity, init=self.init, random_state=seed,
                          learning_rate="auto", **{iterations_keyword(tsne_class): self.max_iter})
        return tsne.fit_transform(points.numpy())

    def _plot(self, figure_class: Any, embedding: Any, labels: Any, names: tuple[str, ...] | None,
              title: str) -> Any:
        """A Figure with one scatter per class (qualitative colours and a legend for up to
        ``MAX_LEGEND_CLASSES`` classes; a continuous colormap without legend beyond)."""
        import matplotlib

        figure = figure_class(figsize=FIGSIZE, dpi=self.dpi)
        axes = figure.add_subplot(1, 1, 1)
        present = sorted({int(label) for label in labels})
        if len(present) > MAX_LEGEND_CLASSES:
            axes.scatter(embedding[:, 0], embedding[:, 1], c=labels, cmap="turbo", s=self.point_size,
                         linewidths=0)
        else:
            colormap = matplotlib.colormaps["tab10" if len(present) <= 10 else "tab20"]
            for position, label in enumerate(present):
                mask = labels == label
                name = names[label] if names is not None and 0 <= label < len(names) else str(label)
                axes.scatter(embedding[mask, 0], embedding[mask, 1], color=colormap(position),
                             s=self.point_size, linewidths=0, label=name)
            axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", markerscale=2.0,
                        frameon=False, borderaxespad=0.0)
        axes.set_title(title, fontsize="medium")
        axes.set_xticks([])
        axes.set_yticks([])
        figure.tight_layout()
        return figure


def _write_png(canvas_class: Any, figure: Any, path: Path, dpi: int) -> None:
    """Render ``figure`` to ``path`` atomically (:func:`selfsup_core.fileio.atomic_write`)."""
    canvas = canvas_class(figure)
    atomic_write(path, canvas.print_png, durable=False)


__all__ = ["TSNE", "class_names", "effective_perplexity", "iterations_keyword", "load_backends", "subsample"]
