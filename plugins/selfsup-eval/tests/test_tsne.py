"""TSNE: a PNG map of test features, its arguments, and its optional dependencies."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from selfsup_eval.evaluation import EvalContext
from selfsup_core.errors import SelfSupError
from selfsup_eval.tsne import FIGSIZE, TSNE, class_names, effective_perplexity, iterations_keyword, subsample

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Blobs(Dataset):
    """``per_class`` points of each of 3 well-separated 8-d Gaussian blobs, as images (8,)."""

    CLASSES = ("ant", "bee", "cat")

    def __init__(self, per_class: int = 20, labelled: bool = True) -> None:
        generator = torch.Generator().manual_seed(0)
        centres = torch.eye(3, 8) * 10.0
        self.labels = torch.arange(3).repeat_interleave(per_class)
        self.points = centres[self.labels] + 0.3 * torch.randn(len(self.labels), 8, generator=generator)
        self.labelled = labelled

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> dict:
        item = {"img": self.points[idx], "idx": idx}
        if self.labelled:
            item["label"] = int(self.labels[idx])
        return item


def context(tmp_path, dataset, seed=0, tag="epoch_3"):
    messages: list[str] = []
    ctx = EvalContext(model=nn.Identity(), datasets={"test": lambda: dataset, "train": lambda: dataset},
                      samples_per_gpu=16, workers_per_gpu=0, work_dir=tmp_path, seed=seed, tag=tag,
                      message=messages.append)
    return ctx, messages


def test_writes_a_png_of_every_point_with_the_default_path(tmp_path):
    pytest.importorskip("sklearn")
    image = pytest.importorskip("matplotlib.image")
    ctx, messages = context(tmp_path, Blobs())
    results = TSNE(pool="flatten", max_iter=250, dpi=40).evaluate(ctx)

    path = tmp_path / "tsne_epoch_3.png"
    assert results == {"tsne_png": str(path), "tsne_points": 60}
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(path)
    assert pixels.shape[:2] == (FIGSIZE[1] * 40, FIGSIZE[0] * 40)  # height, width
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    assert messages[-1] == f"t-SNE of 60 test features -> {path}"


def test_subsamples_num_samples_points_deterministically_per_seed(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    seen = []
    original = TSNE._embed

    def spy(self, tsne_class, points, seed, ctx):
        seen.append(points.clone())
        return original(self, tsne_class, points, seed, ctx)

    monkeypatch.setattr(TSNE, "_embed", spy)
    evaluator = TSNE(num_samples=25, pool="flatten", max_iter=250, dpi=20, out="maps/{tag}.png")
    for seed in (7, 7, 8):
        ctx, _ = context(tmp_path, Blobs(), seed=seed)
        results = evaluator.evaluate(ctx)
        assert results == {"tsne_png": str(tmp_path / "maps" / "epoch_3.png"), "tsne_points": 25}
    assert [len(points) for points in seen] == [25, 25, 25]
    assert torch.equal(seen[0], seen[1])
    assert not torch.equal(seen[0], seen[2])
    # the subset is rows of the L2-normalised features, in dataset order
    rows = torch.nn.functional.normalize(Blobs().points, dim=1)[subsample(60, 25, 7)]
    torch.testing.assert_close(seen[0], rows)


def test_subsample_helper_and_perplexity_cap():
    assert torch.equal(subsample(5, 10, 0), torch.arange(5))
    chosen = subsample(100, 10, 3)
    assert len(set(chosen.tolist())) == 10 and chosen.tolist() == sorted(chosen.tolist())
    assert torch.equal(chosen, subsample(100, 10, 3))
    assert effective_perplexity(30.0, 1000) == 30.0
    assert effective_perplexity(30.0, 61) == 20.0  # (61 - 1) / 3


def test_iteration_keyword_follows_the_scikit_learn_version():
    class Old:
        def __init__(self, n_components=2, n_iter=1000): ...

    class New:
        def __init__(self, n_components=2, max_iter=1000): ...

    assert iterations_keyword(Old) == "n_iter"
    assert iterations_keyword(New) == "max_iter"


def test_class_names_from_the_dataset_or_its_data_source():
    class Source:
        CLASSES = ("a", "b")

    class Wrapped:
        data_source = Source()

    assert class_names(Blobs()) == ("ant", "bee", "cat")
    assert class_names(Wrapped()) == ("a", "b")
    assert class_names(object()) is None


@pytest.mark.parametrize("missing", ["sklearn", "matplotlib"])
def test_a_missing_extra_is_one_clear_line(tmp_path, monkeypatch, missing):
    for name in list(sys.modules):
        if name == missing or name.startswith(missing + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # importing it now raises ImportError
    ctx, _ = context(tmp_path, Blobs())
    with pytest.raises(SelfSupError) as info:
        TSNE(pool="flatten").evaluate(ctx)
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'selfsup-eval[tsne]'" in message
    package = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}[missing]
    missing_part = re.search(r"\((.*) missing\)", message)
    assert missing_part is not None and package in missing_part.group(1)
    assert not list(tmp_path.iterdir())


def test_importing_the_module_imports_neither_backend():
    code = ("import sys, selfsup_eval.tsne; "
            "print(any(m.split('.')[0] in ('sklearn', 'matplotlib') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"split": "val"}, "split must be one of 'train', 'test'"),
    ({"num_samples": 1}, "num_samples must be >= 2"),
    ({"num_samples": 10.5}, "num_samples must be int"),
    ({"perplexity": 0}, "perplexity must be > 0"),
    ({"perplexity": float("nan")}, "perplexity must be > 0"),
    ({"max_iter": 100}, "max_iter must be >= 250"),
    ({"init": "spectral"}, "init must be one of 'pca', 'random'"),
    ({"feature": "head"}, "feature must be one of"),
    ({"pool": "max"}, "pool must be one of 'avg', 'flatten'"),
    ({"normalize": 1}, "normalize must be true or false"),
    ({"point_size": -1.0}, "point_size must be > 0"),
    ({"dpi": True}, "dpi must be int"),
    ({"out": ""}, "out must be a file path"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TSNE(**kwargs)


def test_an_unlabelled_dataset_is_the_require_labels_error(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    ctx, _ = context(tmp_path, Blobs(labelled=False))
    with pytest.raises(ValueError, match=r"TSNE: the \[evaluation.test\] dataset gives no 'label'"):
        TSNE(pool="flatten").evaluate(ctx)


def test_only_the_main_process_runs_tsne_and_writes(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    import selfsup_eval.tsne as tsne_module
    from selfsup_eval.features import Features

    blobs = Blobs()
    monkeypatch.setattr(tsne_module, "extract", lambda *args, **kwargs: Features(blobs.points, blobs.labels))
    monkeypatch.setattr(TSNE, "_embed", lambda *args: pytest.fail("t-SNE ran on a non-main process"))
    ctx = EvalContext(model=nn.Identity(), datasets={"test": lambda: blobs}, work_dir=tmp_path, rank=1,
                      world_size=2, tag="epoch_1")
    results = TSNE(num_samples=50).evaluate(ctx)
    assert results == {"tsne_png": str(tmp_path / "tsne_epoch_1.png"), "tsne_points": 50}
    assert not list(tmp_path.iterdir())
