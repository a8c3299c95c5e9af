"""DeepClusterHook's ``extractor`` comes unbuilt from the config: building the hook (``--check``)
opens no data; the extraction dataset is built when the run starts."""
from __future__ import annotations

from pathlib import Path

import pytest
from selfsup_core.build import Builder
from selfsup_core.errors import ConfigError
from selfsup_data.datasets.deepcluster import DeepClusterDataset
from selfsup_data.sources import NumpyArrays

from selfsup_clustering.deepcluster_hook import DeepClusterHook

PIPELINE = [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True}]


def hook_table(source: dict) -> dict:
    return {"type": "DeepClusterHook", "clustering": {"k": 4, "pca_dim": 8, "backend": "torch"},
            "extractor": {"samples_per_gpu": 32,
                          "dataset": {"type": "OneViewDataset", "data_source": source, "pipeline": PIPELINE}}}


def test_building_the_hook_opens_no_data_source(tmp_path, make_runner):
    missing = tmp_path / "meta" / "train.txt"
    hook = Builder().build(hook_table({"type": "ImageList", "ann_file": str(missing), "root": str(tmp_path)}),
                           "hooks")
    assert isinstance(hook, DeepClusterHook)
    assert hook.extractor["dataset"]["data_source"]["ann_file"] == str(missing)  # still the table
    runner = make_runner(None, dataset=list(range(4)))
    with pytest.raises(ConfigError, match="train.txt"):  # opened now, at run time
        hook._extraction_dataset(runner)


def test_the_extraction_dataset_is_built_at_run_time(fm_npz: Path, make_runner):
    hook = Builder().build(hook_table({"type": "NumpyArrays", "file": str(fm_npz)}), "hooks")
    training = DeepClusterDataset(NumpyArrays(file=str(fm_npz)), [Builder().build(t, "transforms") for t in PIPELINE])
    runner = make_runner(None, dataset=training)
    dataset = hook._extraction_dataset(runner)
    assert type(dataset).__name__ == "OneViewDataset"
    assert len(dataset) == len(training)
    assert hook._extraction_dataset(runner) is dataset  # built once


def test_a_pipeline_table_is_built_at_run_time(fm_npz: Path, make_runner):
    hook = Builder().build({"type": "DeepClusterHook", "clustering": {"k": 4},
                            "extractor": {"pipeline": PIPELINE}}, "hooks")
    training = DeepClusterDataset(NumpyArrays(file=str(fm_npz)), [Builder().build(t, "transforms") for t in PIPELINE])
    dataset = hook._extraction_dataset(make_runner(None, dataset=training))
    assert type(dataset).__name__ == "OneViewDataset"
    assert len(dataset) == len(training)
