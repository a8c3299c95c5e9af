"""``selfsup-run migrate`` on the constructs of the real MMSelfSup 0.x / OpenSelfSup tree (issue 28)
and the migrator's share of the config-safety audit (issue 36: import-path types, bounded work).

Every fixture is a hand-written config in the old dialects (shaped like the real files it names),
written into ``tmp_path``; the CLI runs in real subprocesses where the exit status and the one
error line matter.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from selfsup_core import registry, session
from selfsup_core._compat import tomllib
from selfsup_core.cli import main
from selfsup_core.engine.data import SeededSampler, build_loader

TO_TENSOR = [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True}]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m selfsup_core.cli ARGS`` in a real subprocess."""
    return subprocess.run([sys.executable, "-m", "selfsup_core.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def migrate(capsys: pytest.CaptureFixture[str], source: Path, *extra: str) -> tuple[dict, str]:
    """``migrate SOURCE -o SOURCE.toml`` in this process; returns (the TOML data, stderr)."""
    out = source.with_suffix(".toml")
    code = main(["migrate", str(source), "-o", str(out), "--force", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return tomllib.loads(out.read_text(encoding="utf-8")), captured.err


def one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that ended with exit 2 (no traceback), without its
    ``error: `` prefix."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("error: ")
    return lines[0][len("error: "):]


# -- 1. StepFixCosineAnnealing is carried over by name, with every key -------------------------------
MAE_LR = """
lr_config = dict(
    policy='StepFixCosineAnnealing',
    min_lr=0.0,
    warmup='linear',
    warmup_iters=40,
    warmup_ratio=1e-4,
    warmup_by_epoch=True,
    by_epoch=False)
"""
CAE_LR = """
lr_config = dict(
    policy='StepFixCosineAnnealing',
    min_lr=1e-5,
    warmup='linear',
    warmup_iters=10,
    warmup_ratio=1e-4,
    warmup_by_epoch=True,
    by_epoch=False)
"""


@pytest.mark.parametrize("schedule, expected", [
    (MAE_LR, {"policy": "StepFixCosineAnnealing", "min_lr": 0.0, "warmup": "linear", "warmup_iters": 40,
              "warmup_ratio": 1e-4, "warmup_by_epoch": True, "by_epoch": False}),
    (CAE_LR, {"policy": "StepFixCosineAnnealing", "min_lr": 1e-5, "warmup": "linear", "warmup_iters": 10,
              "warmup_ratio": 1e-4, "warmup_by_epoch": True, "by_epoch": False}),
])
def test_step_fix_cosine_annealing_keeps_its_name_and_keys(tmp_path, capsys, schedule, expected):
    """MMSelfSup 0.x's MAE and CAE schedules (configs/selfsup/mae, cae): the policy starts the
    cosine after warm-up; it is written by name, every key unchanged, and nothing is dropped."""
    source = write(tmp_path / "mae.py", "model = dict(type='MAE', backbone=dict(type='MAEViT', arch='b'))\n"
                   + textwrap.dedent(schedule) + "runner = dict(type='EpochBasedRunner', max_epochs=400)\n")
    data, stderr = migrate(capsys, source)
    assert data["lr_config"] == expected
    assert "lr_config" not in stderr  # no note, no dropped key


def test_a_cae_config_with_an_installed_cae_keeps_its_schedule(tmp_path, capsys):
    """The refusal of CAE depends on the registry: with an algorithm 'CAE' registered, the
    config converts, the StepFix schedule untouched."""
    source = write(tmp_path / "cae.py", "model = dict(type='CAE', backbone=dict(type='MAEViT', arch='b'))\n"
                   + textwrap.dedent(CAE_LR))

    class CAE(torch.nn.Module):
        def __init__(self, backbone: object = None) -> None:
            super().__init__()

    with session.get("algorithms").temporary("CAE", CAE):
        data, _ = migrate(capsys, source)
    assert data["model"]["type"] == "CAE"
    assert data["lr_config"]["policy"] == "StepFixCosineAnnealing"
    assert data["lr_config"]["min_lr"] == 1e-5


# -- 2. SimMIM's Swin stage_cfgs ------------------------------------------------------------------------
def test_simmim_swin_stage_cfgs_become_window_size_and_check(tmp_path):
    """configs/selfsup/_base_/models/simmim_swin-base.py: ``stage_cfgs.block_cfgs.window_size``
    is our ``window_size``; the converted config passes ``--check``."""
    write(tmp_path / "simmim.py", """
        model = dict(
            type='SimMIM',
            backbone=dict(
                type='SimMIMSwinTransformer',
                arch='B',
                img_size=192,
                stage_cfgs=dict(block_cfgs=dict(window_size=6))),
            neck=dict(type='SimMIMNeck', in_channels=128 * 2**3, encoder_stride=32),
            head=dict(type='SimMIMHead', patch_size=4, encoder_in_channels=3))
    """)
    result = cli("migrate", "simmim.py", "-o", "simmim.toml", "--check", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    data = tomllib.loads((tmp_path / "simmim.toml").read_text(encoding="utf-8"))
    backbone = data["model"]["backbone"]
    assert backbone == {"type": "SimMIMSwinTransformer", "arch": "B", "img_size": 192, "window_size": 6}
    assert "model.backbone.stage_cfgs.block_cfgs.window_size -> window_size = 6" in result.stderr


def test_swin_stage_cfgs_per_stage_and_other_options(tmp_path, capsys):
    source = write(tmp_path / "swin.py", """
        model = dict(type='SimMIM', backbone=dict(
            type='SimMIMSwinTransformer', arch='T',
            stage_cfgs=[dict(block_cfgs=dict(window_size=7, shift=True), downsample_cfg=dict())] * 4))
    """)
    data, stderr = migrate(capsys, source)
    assert data["model"]["backbone"]["window_size"] == 7
    assert "dropped model.backbone.stage_cfgs.0.block_cfgs.shift:" in stderr
    assert "dropped model.backbone.stage_cfgs.3.downsample_cfg:" in stderr
    write(tmp_path / "mixed.py", """
        model = dict(type='SimMIM', backbone=dict(type='SimMIMSwinTransformer', arch='T',
                     stage_cfgs=[dict(block_cfgs=dict(window_size=6)), dict(block_cfgs=dict(window_size=12))]))
    """)
    line = one_line_refusal(cli("migrate", "mixed.py", "-o", "mixed.toml", cwd=tmp_path))
    assert line == ("mixed.py: model.backbone.stage_cfgs: stages with different window sizes [6, 12] cannot be "
                    "written: selfsup's Swin takes one window_size")
    assert not (tmp_path / "mixed.toml").exists()


# -- 3. DeepCluster / ODC: --check opens no data ------------------------------------------------------
DEEPCLUSTER = """
data_source = 'ImageNet'
dataset_type = 'DeepClusterDataset'
img_norm_cfg = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
extract_pipeline = [
    dict(type='Resize', size=256),
    dict(type='CenterCrop', size=224),
    dict(type='ToTensor'),
    dict(type='Normalize', **img_norm_cfg),
]
model = dict(
    type='DeepCluster',
    with_sobel=True,
    backbone=dict(type='ResNet', depth=18, in_channels=2, out_indices=[4], norm_cfg=dict(type='BN')),
    neck=dict(type='AvgPool2dNeck'),
    head=dict(type='ClsHead', with_avg_pool=False, in_channels=512, num_classes=100))
data = dict(
    samples_per_gpu=64,
    sampling_replace=True,
    workers_per_gpu=4,
    train=dict(
        type=dataset_type,
        data_source=dict(type=data_source, data_prefix='data/imagenet/train',
                         ann_file='data/imagenet/meta/train.txt'),
        pipeline=[dict(type='RandomResizedCrop', size=224), dict(type='ToTensor')]))
custom_hooks = [
    dict(
        type='DeepClusterHook',
        extractor=dict(
            samples_per_gpu=128,
            workers_per_gpu=8,
            dataset=dict(
                type=dataset_type,
                data_source=dict(type=data_source, data_prefix='data/imagenet/train',
                                 ann_file='data/imagenet/meta/train.txt'),
                pipeline=extract_pipeline)),
        clustering=dict(type='Kmeans', k=100, pca_dim=-1),
        unif_sampling=True,
        reweight=False,
        init_memory=False,
        initial=True,
        interval=1)
]
optimizer = dict(type='SGD', lr=0.3, momentum=0.9, weight_decay=1e-5)
lr_config = dict(policy='step', step=[400])
runner = dict(type='EpochBasedRunner', max_epochs=200)
"""


def test_deepcluster_checks_without_its_data_and_names_the_paths(tmp_path):
    """configs/selfsup/deepcluster: the hook's extractor dataset (an ImageNet list file) is not
    opened by ``--check``, which says which paths the run will read."""
    write(tmp_path / "deepcluster.py", DEEPCLUSTER)
    result = cli("migrate", "deepcluster.py", "-o", "deepcluster.toml", "--check", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "deepcluster.toml: OK, model DeepCluster" in result.stdout
    note = [line for line in result.stderr.splitlines() if line.startswith("note: --check opened no data")]
    assert note == ["note: --check opened no data; the run will read: "
                    "data/imagenet/train (data.train.data_source.root, not found here); "
                    "data/imagenet/meta/train.txt (data.train.data_source.ann_file, not found here); "
                    "data/imagenet/train (hooks.0.extractor.dataset.data_source.root, not found here); "
                    "data/imagenet/meta/train.txt (hooks.0.extractor.dataset.data_source.ann_file, not found here)"]
    data = tomllib.loads((tmp_path / "deepcluster.toml").read_text(encoding="utf-8"))
    assert data["data"]["replace"] is True
    assert data["hooks"][0]["extractor"]["dataset"]["pipeline"] == [
        {"type": "Resize", "size": 256}, {"type": "CenterCrop", "size": 224}, *TO_TENSOR,
        {"type": "Normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}]
    direct = cli("deepcluster.toml", "--check", cwd=tmp_path, timeout=300)
    assert direct.returncode == 0, direct.stderr
    assert direct.stderr.strip().splitlines() == note  # selfsup-run CONFIG --check says the same


def test_deepcluster_check_still_validates_the_extractor_dataset(tmp_path):
    """Deferring the build does not defer the validation: a wrong argument of the extractor's
    dataset is still reported by ``--check``, with its key."""
    write(tmp_path / "bad.toml", """
        [model]
        type = "DeepCluster"
        with_sobel = false
        backbone = { type = "ResNet", depth = 18 }
        neck = { type = "AvgPool2dNeck" }
        head = { type = "ClsHead", in_channels = 512, num_classes = 10 }

        [[hooks]]
        type = "DeepClusterHook"
        clustering = { k = 10 }
        [hooks.extractor.dataset]
        type = "OneViewDataset"
        data_source = { type = "ImageList", ann_file = "missing.txt", rot = "x" }
        pipeline = []
    """)
    result = cli("bad.toml", "--check", cwd=tmp_path)
    assert result.returncode == 2
    assert "hooks.0.extractor.dataset.data_source.rot: unknown argument of ImageList" in result.stderr


# -- 4. models no installed algorithm builds --------------------------------------------------------------
@pytest.mark.parametrize("source, expected", [
    ("model = dict(type='Classification', with_sobel=False, backbone=dict(type='ResNet', depth=50),\n"
     "             head=dict(type='ClsHead', in_channels=2048, num_classes=1000))\n",
     "cls.py: model.type: 'Classification' is a classification benchmark's model (linear probe / fine-tuning), "
     "not a pre-training algorithm; evaluate a pre-trained checkpoint with 'selfsup-run eval CONFIG --checkpoint "
     "CKPT' (kNN, linear probe)"),
    ("model = dict(type='MaskRCNN', backbone=dict(type='ResNet', depth=50))\n",
     "cls.py: model.type: 'MaskRCNN' is a detection / segmentation benchmark's model (run by MMDetection / "
     "MMSegmentation, not by selfsup); export the pre-trained backbone with 'selfsup-run export'"),
    ("model = dict(type='EncoderDecoder', backbone=dict(type='ResNetV1c', depth=50))\n",
     "cls.py: model.type: 'EncoderDecoder' is a detection / segmentation benchmark's model (run by MMDetection / "
     "MMSegmentation, not by selfsup); export the pre-trained backbone with 'selfsup-run export'"),
    ("model = dict(type='BEiT', backbone=dict(type='BEiTViT', arch='b'))\n",
     "cls.py: model.type: 'BEiT': the BEiT algorithm is not implemented in selfsup yet (no installed plugin "
     "provides an algorithm 'BEiT'; 'selfsup-run list algorithms' shows what is installed)"),
    ("model = dict(type='ORL', backbone=dict(type='ResNet', depth=50))\n",
     "cls.py: model.type: 'ORL': the ORL algorithm is not implemented in selfsup yet (no "
     "installed plugin provides an algorithm 'ORL'; 'selfsup-run list algorithms' shows what is "
     "installed)"),
    ("model = dict(type='Frobnicator')\n",
     "cls.py: model.type: no installed algorithm is called 'Frobnicator' ('selfsup-run list algorithms' shows "
     "what is installed; benchmarks are run with 'selfsup-run eval')"),
    ("data = dict(samples_per_gpu=256, train=dict(type='ExtractDataset'))\n",
     "cls.py: no model: not a pre-training config (a kNN / SVM / t-SNE benchmark's settings?); evaluate a "
     "checkpoint with 'selfsup-run eval CONFIG --checkpoint CKPT' or plot features with 'selfsup-run tsne'"),
    ("model = dict(backbone=dict(type='ResNet', depth=50))\n",
     "cls.py: model.type: model has no type; a pre-training config names its algorithm "
     "(model = dict(type='MoCo', ...))"),
])
def test_models_that_no_installed_algorithm_builds_are_refused(tmp_path, source, expected):
    write(tmp_path / "cls.py", source)
    line = one_line_refusal(cli("migrate", "cls.py", "-o", "cls.toml", cwd=tmp_path))
    assert line == expected
    assert not (tmp_path / "cls.toml").exists()


# -- 5. sampling with replacement ------------------------------------------------------------------------
def test_sampling_with_replacement_draws_uniformly_with_repeats():
    """``replace=True``: each epoch draws ``length`` indices with replacement, reproducibly per
    (seed, epoch); without it every index appears once."""
    sampler = SeededSampler(50, seed=3, replace=True)
    sampler.set_epoch(2)
    first = [index for index, _ in sampler]
    sampler.set_epoch(2)
    assert [index for index, _ in sampler] == first
    assert len(first) == 50 and len(set(first)) < 50 and all(0 <= i < 50 for i in first)
    generator = torch.Generator()
    generator.manual_seed(3 * 1_000_003 + 2)
    assert first == torch.randint(0, 50, (50,), generator=generator).tolist()
    plain = SeededSampler(50, seed=3)
    plain.set_epoch(2)
    assert sorted(index for index, _ in plain) == list(range(50))
    loader, loader_sampler = build_loader(list(range(50)), batch_size=10, num_workers=0, seed=3, rank=0,
                                          world_size=1, drop_last=False, pin_memory=False,
                                          persistent_workers=False, prefetch_factor=None, replace=True)
    loader_sampler.set_epoch(2)
    assert [int(x) for batch in loader for x in batch] == first


def test_data_replace_is_a_data_setting(tmp_path):
    from selfsup_core.config import load_config
    from selfsup_core.engine.settings import read_settings

    write(tmp_path / "c.toml", """
        [model]
        type = "SimCLR"
        [runner]
        max_epochs = 1
        [data]
        replace = true
        train = { type = "OneViewDataset" }
    """)
    assert read_settings(load_config(tmp_path / "c.toml")).replace is True
    write(tmp_path / "bad.toml", """
        [data]
        replace = "yes"
    """)
    with pytest.raises(Exception, match="data.replace"):
        read_settings(load_config(tmp_path / "bad.toml"))


def test_mmselfsup_data_replace_and_openselfsup_with_sobel(tmp_path, capsys):
    """MMSelfSup 0.x ODC's ``data.replace = True`` is kept; OpenSelfSup's DeepCluster (with_sobel
    default False there) gets ``with_sobel = false`` written out, with the right note."""
    source = write(tmp_path / "odc.py", """
        model = dict(type='ODC', with_sobel=False, backbone=dict(type='ResNet', depth=18))
        data = dict(samples_per_gpu=64, replace=True, workers_per_gpu=4)
    """)
    data, stderr = migrate(capsys, source)
    assert data["data"] == {"samples_per_gpu": 64, "replace": True, "workers_per_gpu": 4}
    assert "data.replace" not in stderr
    source = write(tmp_path / "dc_open.py", """
        model = dict(type='DeepCluster', backbone=dict(type='ResNet', depth=18))
        total_epochs = 200
    """)
    data, stderr = migrate(capsys, source)
    assert data["model"]["with_sobel"] is False
    assert ("note: model.with_sobel = false: OpenSelfSup's DeepCluster built the Sobel layer only when asked "
            "(default False); written out (selfsup's default is true)") in stderr


# -- 7. nested datasets and pipelines of hooks we do not know ---------------------------------------------
def test_nested_datasets_of_unknown_hooks_are_converted(tmp_path, capsys):
    """A hook selfsup does not know (a user's own): its ``extractor.dataset`` is converted like
    any dataset (ImageNet with a list -> ImageList, ToTensor -> ToImage + ToDtype)."""
    source = write(tmp_path / "hook.py", """
        model = dict(type='MoCo', backbone=dict(type='ResNet', depth=18))
        custom_hooks = [dict(type='FooClusterHook', extractor=dict(
            samples_per_gpu=256,
            dataset=dict(type='ExtractDataset', data_source=dict(
                type='ImageNet', data_prefix='data/train', ann_file='data/meta/train.txt'),
                pipeline=[dict(type='Resize', size=256), dict(type='ToTensor')])))]
    """)
    data, stderr = migrate(capsys, source)
    assert data["hooks"] == [{"type": "FooClusterHook", "extractor": {"samples_per_gpu": 256, "dataset": {
        "type": "OneViewDataset",
        "data_source": {"type": "ImageList", "ann_file": "data/meta/train.txt", "root": "data/train"},
        "pipeline": [{"type": "Resize", "size": 256}, *TO_TENSOR]}}}]
    assert "no selfsup component 'FooClusterHook' is installed; kept as written" in stderr


# -- 8. YAML ------------------------------------------------------------------------------------------------
def test_a_detectron2_yaml_is_named_as_such(tmp_path):
    text = """
        _BASE_: "Base-RCNN-C4-BN.yaml"
        MODEL:
          PIXEL_MEAN: [123.675, 116.280, 103.530]
          WEIGHTS: "See Instructions"
        SOLVER:
          STEPS: (18000, 22000)
    """
    write(tmp_path / "pascal_voc_R_50_C4_24k_moco.yaml", text)
    line = one_line_refusal(cli("migrate", "pascal_voc_R_50_C4_24k_moco.yaml", cwd=tmp_path))
    assert line == ("pascal_voc_R_50_C4_24k_moco.yaml: not a Python config: this is a detectron2 YAML config (a "
                    "detection benchmark's settings, run by detectron2); only MMSelfSup 0.x / OpenSelfSup Python "
                    "configs (.py) can be migrated")
    write(tmp_path / "renamed.py", text)
    line = one_line_refusal(cli("migrate", "renamed.py", cwd=tmp_path))
    assert line.startswith("renamed.py: not a Python config: this is a detectron2 YAML config")


# -- issue 36, item 1: import paths are never written ----------------------------------------------------------
@pytest.mark.parametrize("where, source", [
    ("model.backbone.type", "model = dict(type='MoCo', backbone=dict(type='os:system', command='touch SENTINEL'))"),
    ("model.neck.type", "model = dict(type='MoCo', backbone=dict(type='ResNet'), neck=dict(type='subprocess:run'))"),
    ("model.head.type", "model = dict(type='MoCo', head=dict(type='builtins:eval', source='1'))"),
    ("model.memory_bank.type", "model = dict(type='ODC', memory_bank=dict(type='importlib:import_module'))"),
    ("data.train.type", "model = dict(type='MoCo')\ndata = dict(train=dict(type='os.system', command='x'))"),
    ("data.train.pipeline.0.type",
     "model = dict(type='MoCo')\ndata = dict(train=dict(type='OneViewDataset', pipeline=[dict(type='os:system')]))"),
    ("custom_hooks.0.type", "model = dict(type='MoCo')\ncustom_hooks = [dict(type='torch.nn.Linear')]"),
    ("model.type", "model = dict(type='os:system', command='touch SENTINEL')"),
    ("model.backbone.init_cfg.type",
     "model = dict(type='MoCo', backbone=dict(type='ResNet', init_cfg=dict(type='os:system', command='x')))"),
    ("optimizer.type", "model = dict(type='MoCo')\noptimizer = dict(type='subprocess:run', args=['x'])"),
])
def test_import_path_types_are_refused_with_key_and_value(tmp_path, where, source):
    write(tmp_path / "evil.py", source + "\n")
    result = cli("migrate", "evil.py", "-o", "evil.toml", "--check", cwd=tmp_path)
    line = one_line_refusal(result)
    assert line.startswith(f"evil.py: {where}: ")
    value = line.split(": ", 2)[2]
    assert "import path" in value and ("'os" in value or "'subprocess" in value or "'builtins" in value
                                       or "'importlib" in value or "'torch" in value)
    assert not (tmp_path / "evil.toml").exists()
    assert not (tmp_path / "SENTINEL").exists()


def test_a_type_of_another_openmmlab_library_is_named_as_such(tmp_path):
    write(tmp_path / "loss.py", "model = dict(type='MoCo', head=dict(type='ContrastiveHead',\n"
                                "            loss=dict(type='mmcls.CrossEntropyLoss')))\n")
    line = one_line_refusal(cli("migrate", "loss.py", cwd=tmp_path))
    assert line == ("loss.py: model.head.loss.type: type 'mmcls.CrossEntropyLoss' is a component of mmcls (another "
                    "OpenMMLab library), which selfsup does not have: name an installed component ('selfsup-run list')")


def test_a_qualified_installed_type_is_kept(tmp_path, capsys):
    source = write(tmp_path / "q.py", "model = dict(type='MoCo', backbone=dict(type='selfsup-models:ResNet'))\n")
    data, stderr = migrate(capsys, source)
    assert data["model"]["backbone"] == {"type": "selfsup-models:ResNet"}
    assert "warning" not in stderr


# -- issue 36, item 4: the static evaluator's work is bounded ---------------------------------------------------
@pytest.mark.parametrize("source, expected", [
    ("x = sum([[0]*10**6]*10**6, [])\n",
     "big.py:1: cannot evaluate statically: [[0]*10**6]*10**6 (the value would hold more than 2,000,000 items)"),
    ("x = sum([[0]*10**4]*150, [])\n",
     "big.py:1: cannot evaluate statically: sum([[0]*10**4]*150, []) (sum() failed: ValueError: the result "
     "would be too large)"),
    ("d = dict()\n" + "".join(f"d.update(k{i}=[0]*10**6)\n" for i in range(200)),
     "big.py:3: cannot evaluate statically: d.update(k1=[0]*10**6) (the value would hold more than 2,000,000 "
     "items)"),
    ("x = " + " + ".join(["1"] * 150) + "\n",
     "big.py:1: cannot evaluate statically: " + " + ".join(["1"] * 40)[:117] + "... (expressions nest more than "
     "100 levels deep)"),
    ("x = " + " + ".join(["[1]"] * 20000) + "\n",
     "big.py: cannot evaluate statically: the file nests expressions too deeply to parse (e.g. a very long chain "
     "of '+'); write the values out"),
    ("a = []\n" + "a = [a]\n" * 150,
     "big.py:101: cannot evaluate statically: [a] (values nest more than 100 levels deep)"),
])
def test_the_static_evaluator_is_bounded(tmp_path, source, expected):
    write(tmp_path / "big.py", source)
    line = one_line_refusal(cli("migrate", "big.py", "-o", "big.toml", cwd=tmp_path, timeout=60))
    assert line == expected
    assert not (tmp_path / "big.toml").exists()


def test_a_1200_deep_base_chain_is_refused(tmp_path):
    for i in range(1200):
        write(tmp_path / f"c{i}.py", f"_base_ = 'c{i + 1}.py'\nx{i} = {i}\n")
    write(tmp_path / "c1200.py", "model = dict(type='MoCo')\n")
    line = one_line_refusal(cli("migrate", "c0.py", "-o", "out.toml", cwd=tmp_path, timeout=60))
    assert line == "c31.py:1: _base_: the chain of _base_ files is more than 32 files deep"
    assert not (tmp_path / "out.toml").exists()


def test_the_work_budget_is_shared_by_a_base_chain(tmp_path):
    """Each file alone is within the bounds; together they are not: one line, exit 2."""
    for i in range(30):
        write(tmp_path / f"c{i}.py", f"_base_ = 'c{i + 1}.py'\nx{i} = [0] * 900000\n")
    write(tmp_path / "c30.py", "model = dict(type='MoCo')\n")
    line = one_line_refusal(cli("migrate", "c0.py", "-o", "out.toml", cwd=tmp_path, timeout=120))
    assert line.endswith("(the file takes too much work to evaluate; write the values out)")
    assert not (tmp_path / "out.toml").exists()
