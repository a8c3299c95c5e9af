"""``selfsup-run migrate``: MMSelfSup 0.x / OpenSelfSup Python configs -> TOML, parsed, never run.

Every fixture is a hand-written config in the old dialects, written into ``tmp_path``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selfsup_core._compat import tomllib
from selfsup_core.cli import main
from selfsup_core.errors import ConfigError
from selfsup_migrate.migrate import paramwise_differences
from selfsup_migrate.static_eval import load_python_config

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
TO_TENSOR = [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True}]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def py(*parts: str) -> str:
    """Python source from separately indented parts."""
    return "".join(textwrap.dedent(part).lstrip("\n") for part in parts)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m selfsup_core.cli ARGS`` in a real subprocess."""
    return subprocess.run([sys.executable, "-m", "selfsup_core.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def migrate(capsys: pytest.CaptureFixture[str], source: Path, out: Path, *extra: str) -> tuple[dict, str, str]:
    """Run ``migrate SOURCE -o OUT`` in this process; returns (the TOML data, stdout, stderr)."""
    code = main(["migrate", str(source), "-o", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return tomllib.loads(out.read_text(encoding="utf-8")), captured.out, captured.err


def dropped(stderr: str) -> dict[str, str]:
    """``{key: why}`` of the ``dropped KEY: WHY`` report lines."""
    lines = [line[len("dropped "):] for line in stderr.splitlines() if line.startswith("dropped ")]
    return dict(line.split(": ", 1) for line in lines)


# -- MMSelfSup 0.x: a _base_ chain ---------------------------------------------------------------
def mmselfsup_chain(root: Path) -> Path:
    base = root / "configs" / "selfsup" / "_base_"
    write(base / "models" / "mocov2.py", """
        model = dict(
            type='MoCo',
            queue_len=65536,
            feat_dim=128,
            momentum=0.999,
            backbone=dict(type='ResNet', depth=50, in_channels=3, out_indices=[4], norm_cfg=dict(type='BN')),
            neck=dict(type='MoCoV2Neck', in_channels=2048, hid_channels=2048, out_channels=128, with_avg_pool=True),
            head=dict(type='ContrastiveHead', temperature=0.2))
    """)
    write(base / "datasets" / "imagenet_common.py", """
        data_source = 'ImageNet'
        img_norm_cfg = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        data = dict(samples_per_gpu=32, workers_per_gpu=4, drop_last=True)
    """)
    write(base / "datasets" / "imagenet_mocov2.py", """
        _base_ = './imagenet_common.py'
        # dataset settings
        dataset_type = 'MultiViewDataset'
        img_norm_cfg = {{_base_.img_norm_cfg}}
        train_pipeline = [
            dict(type='RandomResizedCrop', size=224, scale=(0.2, 1.)),
            dict(
                type='RandomAppliedTrans',
                transforms=[dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)],
                p=0.8),
            dict(type='RandomGrayscale', p=0.2),
            dict(type='GaussianBlur', sigma_min=0.1, sigma_max=2.0, p=0.5),
            dict(type='RandomHorizontalFlip'),
        ]
        prefetch = False
        if not prefetch:
            train_pipeline.extend([dict(type='ToTensor'), dict(type='Normalize', **img_norm_cfg)])
        data = dict(
            train=dict(
                type=dataset_type,
                data_source=dict(
                    type='{{_base_.data_source}}',
                    data_prefix='data/imagenet/train',
                    ann_file='data/imagenet/meta/train.txt',
                ),
                num_views=[2],
                pipelines=[train_pipeline],
                prefetch=prefetch,
            ))
    """)
    write(base / "schedules" / "sgd_coslr-200e_in1k.py", """
        optimizer = dict(type='SGD', lr=0.03, weight_decay=1e-4, momentum=0.9, nesterov=True)
        optimizer_config = dict(grad_clip=None)
        lr_config = dict(policy='CosineAnnealing', min_lr=0.)
        runner = dict(type='EpochBasedRunner', max_epochs=200)
    """)
    write(base / "default_runtime.py", """
        checkpoint_config = dict(interval=10)
        log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook'), dict(type='TensorboardLoggerHook')])
        dist_params = dict(backend='nccl')
        log_level = 'INFO'
        load_from = None
        resume_from = None
        workflow = [('train', 1)]
        persistent_workers = True
        opencv_num_threads = 0
        mp_start_method = 'fork'
    """)
    return write(root / "configs" / "selfsup" / "mocov2" / "mocov2_resnet18_8xb32-coslr-100e_in1k.py", """
        _base_ = [
            '../_base_/models/mocov2.py',
            '../_base_/datasets/imagenet_mocov2.py',
            '../_base_/schedules/sgd_coslr-200e_in1k.py',
            '../_base_/default_runtime.py',
        ]
        model = dict(backbone=dict(depth=18), neck=dict(in_channels=512, hid_channels=512))
        optimizer = dict(_delete_=True, type='LARS', lr=0.3, momentum=0.9, weight_decay=1e-6)
        lr_config = dict(warmup='linear', warmup_iters=10, warmup_ratio=1e-4, warmup_by_epoch=True)
        runner = dict(max_epochs={{_base_.runner.max_epochs}} // 2)
        checkpoint_config = dict(interval=10, max_keep_ckpts=3)
        num_gpus = 8
        if num_gpus > 4:
            data = dict(samples_per_gpu=16)
        elif num_gpus > 2:
            data = dict(samples_per_gpu=os.cpu_count())  # never evaluated: the branch is not taken
        else:
            data = dict(samples_per_gpu=64)
        fp16 = dict(loss_scale=512.)
    """)


MMSELFSUP_EXPECTED = {
    "model": {
        "type": "MoCo", "queue_len": 65536, "feat_dim": 128, "momentum": 0.999,
        "backbone": {"type": "ResNet", "depth": 18, "in_channels": 3, "out_indices": [4], "norm_cfg": {"type": "BN"}},
        "neck": {"type": "MoCoV2Neck", "in_channels": 512, "hid_channels": 512, "out_channels": 128,
                 "with_avg_pool": True},
        "head": {"type": "ContrastiveHead", "temperature": 0.2},
    },
    "data": {
        "samples_per_gpu": 16, "workers_per_gpu": 4, "drop_last": True, "persistent_workers": True,
        "train": {
            "type": "MultiViewDataset",
            "num_views": [2],
            "data_source": {"type": "ImageList", "ann_file": "data/imagenet/meta/train.txt",
                            "root": "data/imagenet/train"},
            "pipelines": [[
                {"type": "RandomResizedCrop", "size": 224, "scale": [0.2, 1.0]},
                {"type": "RandomAppliedTrans", "p": 0.8, "transforms": [
                    {"type": "ColorJitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}]},
                {"type": "RandomGrayscale", "p": 0.2},
                {"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "p": 0.5},
                {"type": "RandomHorizontalFlip"},
                *TO_TENSOR,
                {"type": "Normalize", **NORM},
            ]],
        },
    },
    "optimizer": {"type": "LARS", "lr": 0.3, "momentum": 0.9, "weight_decay": 1e-6},
    "lr_config": {"policy": "CosineAnnealing", "min_lr": 0.0, "warmup": "linear", "warmup_iters": 10,
                  "warmup_ratio": 1e-4, "warmup_by_epoch": True},
    "runner": {"type": "EpochBasedRunner", "max_epochs": 100, "precision": "fp16"},
    "checkpoint_config": {"interval": 10, "max_keep_ckpts": 3},
    "log_config": {"interval": 50, "tensorboard": True},
}


def test_mmselfsup_chain_converts_and_checks_in_a_subprocess(tmp_path):
    source = mmselfsup_chain(tmp_path)
    result = cli("migrate", str(source.relative_to(tmp_path)), "-o", "mocov2.toml", "--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "mocov2.toml: OK, model MoCo" in result.stdout
    text = (tmp_path / "mocov2.toml").read_text()
    assert tomllib.loads(text) == MMSELFSUP_EXPECTED
    header = text.splitlines()[:4]
    assert header[0].startswith("# Migrated from configs/selfsup/mocov2/mocov2_resnet18_8xb32-coslr-100e_in1k.py")
    assert "MMSelfSup 0.x" in header[0]
    assert header[1] == ("#   selfsup-run migrate configs/selfsup/mocov2/mocov2_resnet18_8xb32-coslr-100e_in1k.py "
                         "-o mocov2.toml --check")
    assert header[2] == (
        "# _base_ files read (in order): configs/selfsup/_base_/models/mocov2.py, "
        "configs/selfsup/_base_/datasets/imagenet_mocov2.py, configs/selfsup/_base_/datasets/imagenet_common.py, "
        "configs/selfsup/_base_/schedules/sgd_coslr-200e_in1k.py, configs/selfsup/_base_/default_runtime.py")
    assert "_base_ =" not in text
    drops = dropped(result.stderr)
    assert drops == {
        "data.train.prefetch": "no prefetch option; use workers_per_gpu (and augment_on = \"device\" for GPU "
                               "augmentation)",
        "optimizer_config.grad_clip": "None: no clipping (the default)",
        "fp16.loss_scale": "the gradient scaler scales the loss dynamically",
        "log_config.hooks.0": "TextLoggerHook: the trainer always shows progress and writes metrics.jsonl",
        "dist_params": "torchrun and the environment choose the process-group backend",
        "log_level": "the log level is not configurable",
        "load_from": drops["load_from"],
        "resume_from": "continue a run with 'selfsup-run NEW.toml --resume CKPT'",
        "workflow": "only training epochs are run",
        "opencv_num_threads": "set by the trainer",
        "mp_start_method": "set by the trainer",
        **{k: drops[k] for k in ("data_source", "img_norm_cfg", "dataset_type", "train_pipeline", "prefetch",
                                 "num_gpus")},
    }
    assert drops["num_gpus"].startswith("not a setting (a variable of the Python config")
    assert "# Dropped keys (not carried over):" in text and "#   dropped workflow: only training epochs are run" in text


def test_mmselfsup_chain_to_stdout(tmp_path, capsys):
    source = mmselfsup_chain(tmp_path)
    assert main(["migrate", str(source)]) == 0
    captured = capsys.readouterr()
    assert tomllib.loads(captured.out) == MMSELFSUP_EXPECTED
    assert "dropped workflow: only training epochs are run" in captured.err


# -- OpenSelfSup -----------------------------------------------------------------------------------
OPENSELFSUP_BASE = """
    train_cfg = {}
    test_cfg = {}
    optimizer_config = dict()  # grad_clip, coalesce, bucket_size_mb
    log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook')])
    dist_params = dict(backend='nccl')
    cudnn_benchmark = True
    log_level = 'INFO'
    load_from = None
    resume_from = None
    workflow = [('train', 1)]
"""
OPENSELFSUP_DATA = """
    data_source_cfg = dict(type='ImageNet', memcached=True, mclient_path='/mnt/lustre/share/memcached_client')
    data_train_list = 'data/imagenet/meta/train.txt'
    data_train_root = 'data/imagenet/train'
    img_norm_cfg = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
"""
OPENSELFSUP_SOURCE = {"type": "ImageList", "ann_file": "data/imagenet/meta/train.txt", "root": "data/imagenet/train"}


def test_openselfsup_moco_v2(tmp_path, capsys):
    write(tmp_path / "configs" / "base.py", OPENSELFSUP_BASE)
    source = write(tmp_path / "configs" / "selfsup" / "moco" / "r18_v2.py", py("""
        _base_ = '../../base.py'
        model = dict(
            type='MOCO',
            pretrained=None,
            queue_len=4096,
            feat_dim=128,
            momentum=0.999,
            backbone=dict(type='ResNet', depth=18, in_channels=3, out_indices=[4], norm_cfg=dict(type='BN')),
            neck=dict(type='NonLinearNeckV1', in_channels=512, hid_channels=512, out_channels=128, with_avg_pool=True),
            head=dict(type='ContrastiveHead', temperature=0.2))
    """, OPENSELFSUP_DATA, """
        dataset_type = 'ContrastiveDataset'
        train_pipeline = [
            dict(type='RandomResizedCrop', size=224, scale=(0.2, 1.)),
            dict(type='RandomAppliedTrans', transforms=[dict(type='GaussianBlur', sigma_min=0.1, sigma_max=2.0,
                 kernel_size=23)], p=0.5),
            dict(type='RandomHorizontalFlip'),
            dict(type='ToTensor'),
            dict(type='Normalize', **img_norm_cfg),
        ]
        data = dict(
            imgs_per_gpu=32,  # total 32*8=256
            workers_per_gpu=4,
            drop_last=True,
            train=dict(
                type=dataset_type,
                data_source=dict(list_file=data_train_list, root=data_train_root, **data_source_cfg),
                pipeline=train_pipeline))
        optimizer = dict(type='SGD', lr=0.03, weight_decay=0.0001, momentum=0.9)
        lr_config = dict(policy='CosineAnnealing', min_lr=0.)
        checkpoint_config = dict(interval=10)
        total_epochs = 200
    """))
    out = tmp_path / "moco.toml"
    data, stdout, stderr = migrate(capsys, source, out, "--check")
    assert "OK, model MoCo" in stdout
    assert data == {
        "model": {
            "type": "MoCo", "queue_len": 4096, "feat_dim": 128, "momentum": 0.999,
            "backbone": {"type": "ResNet", "depth": 18, "in_channels": 3, "out_indices": [4],
                         "norm_cfg": {"type": "BN"}},
            "neck": {"type": "MoCoV2Neck", "in_channels": 512, "hid_channels": 512, "out_channels": 128,
                     "with_avg_pool": True},
            "head": {"type": "ContrastiveHead", "temperature": 0.2},
        },
        "data": {
            "samples_per_gpu": 32, "workers_per_gpu": 4, "drop_last": True,
            "train": {
                "type": "MultiViewDataset", "num_views": [2], "data_source": OPENSELFSUP_SOURCE,
                "pipelines": [[
                    {"type": "RandomResizedCrop", "size": 224, "scale": [0.2, 1.0]},
                    {"type": "RandomAppliedTrans", "p": 0.5, "transforms": [
                        {"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "kernel_size": 23, "p": 1.0}]},
                    {"type": "RandomHorizontalFlip"},
                    *TO_TENSOR,
                    {"type": "Normalize", **NORM},
                ]],
            },
        },
        "optimizer": {"type": "SGD", "lr": 0.03, "weight_decay": 0.0001, "momentum": 0.9},
        "lr_config": {"policy": "CosineAnnealing", "min_lr": 0.0},
        "runner": {"cudnn_benchmark": True, "max_epochs": 200},
        "checkpoint_config": {"interval": 10},
        "log_config": {"interval": 50},
    }
    drops = dropped(stderr)
    assert drops["model.pretrained"] == "None: no pretrained weights (the default)"
    assert drops["data.train.data_source.memcached"].startswith("memcached reading is not supported")
    assert "data.train.data_source.mclient_path" in drops and "train_cfg" in drops and "data_source_cfg" in drops
    assert "note: data.train.pipelines.0.1.transforms.0: GaussianBlur p = 1.0" in stderr
    assert "(OpenSelfSup Python config)" in out.read_text().splitlines()[0]


def test_openselfsup_byol(tmp_path, capsys):
    source = write(tmp_path / "byol_r18.py", py("""
        import copy
        from copy import deepcopy

        model = dict(
            type='BYOL',
            pretrained=None,
            base_momentum=0.99,
            backbone=dict(type='ResNet', depth=18, in_channels=3, out_indices=[4], norm_cfg=dict(type='SyncBN')),
            neck=dict(type='NonLinearNeckV2', in_channels=512, hid_channels=1024, out_channels=256,
                      with_avg_pool=True),
            head=dict(type='LatentPredictHead', size_average=True,
                      predictor=dict(type='NonLinearNeckV2', in_channels=256, hid_channels=1024, out_channels=256,
                                     with_avg_pool=False)))
    """, OPENSELFSUP_DATA, """
        train_pipeline = [
            dict(type='RandomResizedCrop', size=224, interpolation=3),
            dict(type='RandomHorizontalFlip'),
            dict(type='RandomGrayscale', p=0.2),
            dict(type='RandomAppliedTrans', transforms=[dict(type='GaussianBlur', sigma_min=0.1, sigma_max=2.0,
                 kernel_size=23)], p=1.),
            dict(type='RandomAppliedTrans', transforms=[dict(type='Solarization')], p=0.),
        ]
        train_pipeline += [dict(type='ToTensor'), dict(type='Normalize', **img_norm_cfg)]
        train_pipeline1 = copy.deepcopy(train_pipeline)
        train_pipeline2 = deepcopy(train_pipeline)
        train_pipeline2[3]['p'] = 0.1  # gaussian blur
        train_pipeline2[4]['p'] = 0.2  # solarization
        data = dict(
            imgs_per_gpu=32,
            workers_per_gpu=8,
            train=dict(
                type='BYOLDataset',
                data_source=dict(list_file=data_train_list, root=data_train_root, **data_source_cfg),
                pipeline1=train_pipeline1,
                pipeline2=train_pipeline2))
        custom_hooks = [dict(type='BYOLHook', end_momentum=1.)]
        optimizer = dict(
            type='LARS', lr=4.8, weight_decay=0.000001, momentum=0.9,
            paramwise_options={
                '(bn|gn)(\\d+)?.(weight|bias)': dict(weight_decay=0., lars_exclude=True),
                'bias': dict(weight_decay=0., lars_exclude=True)})
        optimizer_config = dict(update_interval=16, grad_clip=dict(max_norm=10, norm_type=2))
        lr_config = dict(policy='CosineAnnealing', min_lr=0., warmup='linear', warmup_iters=2, warmup_ratio=0.0001,
                         warmup_by_epoch=True, gamma=0.1)
        checkpoint_config = dict(interval=10, create_symlink=False)
        log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook')])
        total_epochs = 200
    """))
    out = tmp_path / "byol.toml"
    data, stdout, stderr = migrate(capsys, source, out, "--check")
    assert "OK, model BYOL" in stdout
    projector = {"num_layers": 2, "with_bias": True, "with_last_bn": False, "with_last_bias": True,
                 "norm_cfg": {"type": "BN"}}
    assert data["model"] == {
        "type": "BYOL", "base_momentum": 0.99,
        "backbone": {"type": "ResNet", "depth": 18, "in_channels": 3, "out_indices": [4],
                     "norm_cfg": {"type": "SyncBN"}},
        "neck": {"type": "NonLinearNeck", "in_channels": 512, "hid_channels": 1024, "out_channels": 256,
                 "with_avg_pool": True, **projector},
        "head": {"type": "LatentPredictHead", "predictor": {
            "type": "NonLinearNeck", "in_channels": 256, "hid_channels": 1024, "out_channels": 256,
            "with_avg_pool": False, **projector}},
    }

    def views(blur: float, solarize: float) -> list[dict]:
        return [
            {"type": "RandomResizedCrop", "size": 224, "interpolation": 3},
            {"type": "RandomHorizontalFlip"},
            {"type": "RandomGrayscale", "p": 0.2},
            {"type": "RandomAppliedTrans", "p": blur, "transforms": [
                {"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "kernel_size": 23, "p": 1.0}]},
            {"type": "RandomAppliedTrans", "p": solarize, "transforms": [{"type": "Solarization", "p": 1.0}]},
            *TO_TENSOR,
            {"type": "Normalize", **NORM},
        ]

    assert data["data"] == {
        "samples_per_gpu": 32, "workers_per_gpu": 8,
        "train": {"type": "MultiViewDataset", "num_views": [1, 1], "data_source": OPENSELFSUP_SOURCE,
                  "pipelines": [views(1.0, 0.0), views(0.1, 0.2)]},
    }
    assert data["hooks"] == [{"type": "MomentumUpdate", "end_momentum": 1.0}]
    assert data["optimizer_config"] == {"accumulate_steps": 16, "grad_clip": {"max_norm": 10, "norm_type": 2}}
    assert data["optimizer"]["paramwise_options"] == {
        "(bn|gn)(\\d+)?.(weight|bias)": {"weight_decay": 0.0, "lars_exclude": True},
        "bias": {"weight_decay": 0.0, "lars_exclude": True},
    }
    assert data["runner"] == {"max_epochs": 200}
    assert data["lr_config"] == {"policy": "CosineAnnealing", "min_lr": 0.0, "warmup": "linear", "warmup_iters": 2,
                                 "warmup_ratio": 0.0001, "warmup_by_epoch": True}
    drops = dropped(stderr)
    assert drops["model.head.size_average"] == "LatentPredictHead always averages the loss over the batch"
    assert drops["lr_config.gamma"] == "not read by the 'CosineAnnealing' policy"
    assert "checkpoint_config.create_symlink" in drops
    assert {"train_pipeline", "train_pipeline1", "train_pipeline2"} <= set(drops)
    assert "copy" not in drops and "deepcopy" not in drops  # imports are not config keys


def test_openselfsup_simclr_neck_and_pretrained(tmp_path, capsys):
    source = write(tmp_path / "simclr.py", """
        model = dict(
            type='SimCLR',
            pretrained='checkpoints/resnet18.pth',
            backbone=dict(type='ResNet', depth=18, in_channels=3, out_indices=[4], norm_cfg=dict(type='SyncBN'),
                          style='pytorch'),
            neck=dict(type='NonLinearNeckSimCLR', in_channels=512, hid_channels=512, out_channels=128,
                      num_layers=2, with_avg_pool=True),
            head=dict(type='ContrastiveHead', temperature=0.1))
        dataset_type = 'ContrastiveDataset'
        data = dict(imgs_per_gpu=256, workers_per_gpu=4,
                    train=dict(type=dataset_type, data_source=dict(type='Cifar10', root='data/cifar'),
                               pipeline=[dict(type='RandomApply', transforms=[dict(type='ColorJitter',
                                              brightness=0.4)], p=0.8), dict(type='ToTensor')]))
        total_epochs = 10
    """)
    data, _, stderr = migrate(capsys, source, tmp_path / "simclr.toml")
    assert data["model"]["backbone"]["init_cfg"] == {"type": "Pretrained", "checkpoint": "checkpoints/resnet18.pth"}
    assert data["model"]["neck"] == {
        "type": "NonLinearNeck", "in_channels": 512, "hid_channels": 512, "out_channels": 128, "num_layers": 2,
        "with_avg_pool": True, "with_bias": False, "with_last_bn": True, "with_last_bn_affine": True,
        "with_last_bias": False, "norm_cfg": {"type": "SyncBN"},
    }
    assert data["data"]["train"] == {
        "type": "MultiViewDataset", "num_views": [2],
        "data_source": {"type": "CIFAR10", "root": "data/cifar"},
        "pipelines": [[{"type": "RandomAppliedTrans", "transforms": [{"type": "ColorJitter", "brightness": 0.4}],
                        "p": 0.8}, *TO_TENSOR]],
    }
    assert dropped(stderr)["model.backbone.style"].startswith("only the 'pytorch' style exists")
    assert "note: model.pretrained 'checkpoints/resnet18.pth' -> model.backbone.init_cfg (Pretrained)" in stderr


def test_openselfsup_npid_and_an_unknown_component(tmp_path, capsys):
    source = write(tmp_path / "npid.py", """
        model = dict(
            type='NPID',
            neg_num=256,
            backbone=dict(type='ResNet', depth=18, in_channels=3, out_indices=[4], norm_cfg=dict(type='BN')),
            neck=dict(type='LinearNeck', in_channels=512, out_channels=128, with_avg_pool=True),
            head=dict(type='ContrastiveHead', temperature=0.07),
            memory_bank=dict(type='SimpleMemory', length=1000, feat_dim=128, momentum=0.5))
        data = dict(imgs_per_gpu=32, workers_per_gpu=2,
                    train=dict(type='NPIDDataset', data_source=dict(type='ImageNet', root='data/train'),
                               pipeline=[dict(type='RandomResizedCrop', size=32), dict(type='FancyAugment', k=1),
                                         dict(type='ToTensor')]))
        optimizer = dict(type='SGD', lr=0.03, weight_decay=0.0001, momentum=0.9, nesterov=False)
        lr_config = dict(policy='step', step=[120, 160])
        custom_hooks = [dict(type='ValidateHook', interval=10)]
        total_epochs = 200
    """)
    data, _, stderr = migrate(capsys, source, tmp_path / "npid.toml")
    assert data["model"]["memory_bank"] == {"type": "SimpleMemory", "length": 1000, "feat_dim": 128, "momentum": 0.5}
    assert data["data"]["train"] == {
        "type": "OneViewDataset", "data_source": {"type": "ImageFolder", "root": "data/train"},
        "pipeline": [{"type": "RandomResizedCrop", "size": 32}, {"type": "FancyAugment", "k": 1}, *TO_TENSOR],
    }
    assert data["lr_config"] == {"policy": "step", "step": [120, 160]}
    assert "hooks" not in data
    assert dropped(stderr)["custom_hooks.0"].startswith("ValidateHook: online evaluation is configured")
    assert ("warning: data.train.pipeline.1: no selfsup component 'FancyAugment' is installed; kept as written"
            in stderr)
    # without the unknown transform the NPID config builds
    del data["data"]["train"]["pipeline"][1]
    (tmp_path / "npid_ok.toml").write_text(__import__("selfsup_core.config").config.dump_toml(data))
    assert main([str(tmp_path / "npid_ok.toml"), "--check"]) == 0
    assert "OK, model NPID" in capsys.readouterr().out


def test_mmselfsup_hooks_and_schedules(tmp_path, capsys):
    source = write(tmp_path / "hooks.py", """
        model = dict(type='SwAV', backbone=dict(type='ResNet', depth=18))
        optimizer_config = dict(frozen_layers_cfg=dict(prototypes=5005))
        lr_config = dict(policy='StepFixCosineAnnealing', min_lr=0., by_epoch=False, warmup='linear', warmup_iters=10,
                         warmup_ratio=1e-4, warmup_by_epoch=True)
        runner = dict(type='EpochBasedRunner', max_epochs=200)
        extract_pipeline = [dict(type='Resize', size=256), dict(type='CenterCrop', size=224), dict(type='ToTensor')]
        custom_hooks = [
            dict(type='SwAVHook', priority='VERY_HIGH', batch_size=32, epoch_queue_starts=15, crops_for_assign=[0, 1],
                 feat_dim=128, queue_length=3840, interval=1),
            dict(type='MomentumUpdateHook', end_momentum=1.),
            dict(type='DeepClusterHook',
                 extractor=dict(samples_per_gpu=128, workers_per_gpu=8, prefetch=False, img_norm_cfg=dict(),
                                dataset=dict(type='DeepClusterDataset', pipeline=extract_pipeline,
                                             data_source=dict(type='ImageNet', data_prefix='data/train'))),
                 clustering=dict(type='Kmeans', k=10000, pca_dim=256), unif_sampling=True, reweight=False,
                 init_memory=False, initial=True, interval=1),
        ]
    """)
    data, _, stderr = migrate(capsys, source, tmp_path / "hooks.toml")
    assert data["hooks"] == [
        {"type": "SwAVHook", "batch_size": 32, "epoch_queue_starts": 15, "crops_for_assign": [0, 1], "feat_dim": 128,
         "queue_length": 3840, "frozen_layers_cfg": {"prototypes": 5005}},
        {"type": "MomentumUpdate", "end_momentum": 1.0},
        {"type": "DeepClusterHook",
         "extractor": {"samples_per_gpu": 128, "workers_per_gpu": 8, "dataset": {
             "type": "DeepClusterDataset", "data_source": {"type": "ImageFolder", "root": "data/train"},
             "pipeline": [{"type": "Resize", "size": 256}, {"type": "CenterCrop", "size": 224}, *TO_TENSOR]}},
         "clustering": {"k": 10000, "pca_dim": 256}, "unif_sampling": True, "reweight": False, "init_memory": False,
         "initial": True, "interval": 1},
    ]
    assert "optimizer_config" not in data
    assert data["lr_config"] == {"policy": "StepFixCosineAnnealing", "min_lr": 0.0, "by_epoch": False,
                                 "warmup": "linear", "warmup_iters": 10, "warmup_ratio": 1e-4, "warmup_by_epoch": True}
    drops = dropped(stderr)
    assert drops["custom_hooks.0.priority"] == "hooks run in their [[hooks]] order"
    assert drops["custom_hooks.0.interval"] == "not an argument of SwAVHook"
    assert drops["custom_hooks.2.clustering.type"] == "DeepClusterHook always runs k-means (Kmeans)"
    assert drops["custom_hooks.2.extractor.img_norm_cfg"].startswith("DeepClusterHook extractor takes dataset, pipeline")


# -- constructs found in the real MMSelfSup 0.x / OpenSelfSup configs --------------------------------
def test_openselfsup_simclr_neck_flags_pre_conv_and_momentum_interval(tmp_path, capsys):
    """OpenSelfSup's BYOL config (r50_bs256_accmulate16_ep300.py): a NonLinearNeckSimCLR with
    with_bias / with_last_bn given, BYOL(pre_conv=...), BYOLHook(update_interval=16) with
    optimizer_config.update_interval = 16."""
    source = write(tmp_path / "byol.py", """
        update_interval = 16
        model = dict(
            type='BYOL', pretrained=None, base_momentum=0.99, pre_conv=True,
            backbone=dict(type='ResNet', depth=18, in_channels=3, out_indices=[4]),
            neck=dict(type='NonLinearNeckSimCLR', in_channels=512, hid_channels=64, out_channels=32, num_layers=2,
                      sync_bn=False, with_bias=True, with_last_bn=False, with_avg_pool=True),
            head=dict(type='LatentPredictHead',
                      predictor=dict(type='NonLinearNeckSimCLR', in_channels=32, hid_channels=64, out_channels=32,
                                     num_layers=2, sync_bn=False, with_avg_pool=False)))
        custom_hooks = [dict(type='BYOLHook', end_momentum=1., update_interval=update_interval)]
        use_fp16 = False
        optimizer_config = dict(update_interval=update_interval, use_fp16=use_fp16)
        total_epochs = 1
    """)
    data, _, stderr = migrate(capsys, source, tmp_path / "byol.toml")
    bn = {"type": "BN"}
    assert data["model"]["neck"] == {
        "type": "NonLinearNeck", "in_channels": 512, "hid_channels": 64, "out_channels": 32, "num_layers": 2,
        "with_bias": True, "with_last_bn": False, "with_avg_pool": True, "with_last_bn_affine": True,
        "with_last_bias": True, "norm_cfg": bn}
    assert data["model"]["head"]["predictor"] == {
        "type": "NonLinearNeck", "in_channels": 32, "hid_channels": 64, "out_channels": 32, "num_layers": 2,
        "with_avg_pool": False, "with_bias": False, "with_last_bn": True, "with_last_bn_affine": True,
        "with_last_bias": False, "norm_cfg": bn}
    assert "pre_conv" not in data["model"]
    assert dropped(stderr)["model.pre_conv"].startswith("not an argument of selfsup's BYOL")
    # 16 iterations with 16 accumulation steps = every optimizer step (the default)
    assert data["optimizer_config"] == {"accumulate_steps": 16}
    assert data["hooks"] == [{"type": "MomentumUpdate", "end_momentum": 1.0}]
    assert "note: hooks.0.update_interval: 16 iterations = 1 optimizer step(s)" in stderr


def test_momentum_interval_in_optimizer_steps(tmp_path, capsys):
    source = write(tmp_path / "m.py", """
        model = dict(type='BYOL', backbone=dict(type='ResNet', depth=18))
        optimizer_config = dict(update_interval=4)
        custom_hooks = [dict(type='MomentumUpdateHook', update_interval=8),
                        dict(type='MomentumUpdateHook', update_interval=6)]
    """)
    data, _, stderr = migrate(capsys, source, tmp_path / "m.toml")
    assert data["hooks"] == [{"type": "MomentumUpdate", "update_interval": 2},
                             {"type": "MomentumUpdate", "update_interval": 6}]
    assert "warning: hooks.1.update_interval = 6 iterations is not a multiple of accumulate_steps = 4" in stderr


def test_mmselfsup_old_defaults_extractor_and_sampling(tmp_path, capsys):
    """MMSelfSup 0.x: DeepCluster without with_sobel (True there, as here), a MoCo v3
    VisionTransformer (always sin-cos there), the DeepClusterHook extractor's imgs_per_gpu and
    ODC's data.sampling_replace."""
    write(tmp_path / "dc.py", """
        model = dict(type='DeepCluster', backbone=dict(type='ResNet', depth=18, in_channels=3),
                     neck=dict(type='AvgPool2dNeck'), head=dict(type='ClsHead', in_channels=512, num_classes=10))
        data = dict(imgs_per_gpu=64, sampling_replace=True, workers_per_gpu=4)
        custom_hooks = [dict(type='DeepClusterHook', extractor=dict(imgs_per_gpu=128, workers_per_gpu=8),
                             clustering=dict(type='Kmeans', k=10, pca_dim=-1))]
    """)
    write(tmp_path / "sobel.py", """
        _base_ = 'dc.py'
        model = dict(with_sobel=True, backbone=dict(in_channels=2))
    """)
    write(tmp_path / "vit.py", """
        model = dict(type='MoCoV3', base_momentum=0.99,
                     backbone=dict(type='VisionTransformer', arch='mocov3-small', img_size=224, patch_size=16))
    """)
    write(tmp_path / "vit_pretrained.py", """
        model = dict(type='MoCoV3', backbone=dict(type='VisionTransformer', arch='mocov3-small',
                                                   init_cfg=dict(type='Pretrained', checkpoint='w.pth')))
    """)
    data, _, stderr = migrate(capsys, tmp_path / "dc.py", tmp_path / "dc.toml")
    assert data["model"]["with_sobel"] is True  # MMSelfSup 0.x's DeepCluster default, written out
    assert "note: model.with_sobel = true: MMSelfSup 0.x's DeepCluster built the Sobel layer by default" in stderr
    assert data["hooks"][0]["extractor"] == {"samples_per_gpu": 128, "workers_per_gpu": 8}
    assert data["data"] == {"samples_per_gpu": 64, "replace": True, "workers_per_gpu": 4}
    assert "note: data.sampling_replace -> data.replace (sampling with replacement)" in stderr
    data, _, _ = migrate(capsys, tmp_path / "sobel.py", tmp_path / "sobel.toml")
    assert data["model"]["with_sobel"] is True and data["model"]["backbone"]["in_channels"] == 2
    data, _, stderr = migrate(capsys, tmp_path / "vit.py", tmp_path / "vit.toml")
    assert data["model"]["backbone"]["pos_embed_type"] == "sincos"
    assert 'note: model.backbone.pos_embed_type = "sincos"' in stderr
    data, _, _ = migrate(capsys, tmp_path / "vit_pretrained.py", tmp_path / "vit_pretrained.toml")
    assert "pos_embed_type" not in data["model"]["backbone"]


def test_an_mmselfsup_1x_config_is_refused(tmp_path):
    write(tmp_path / "new.py", """
        default_scope = 'mmselfsup'
        model = dict(type='MoCo')
        train_dataloader = dict(batch_size=32)
        optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.03))
    """)
    result = cli("migrate", "new.py", "-o", "new.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert not (tmp_path / "new.toml").exists()
    assert "MMSelfSup 1.x (MMEngine) config (train_dataloader, optim_wrapper, default_scope)" in result.stderr


# -- refusals ---------------------------------------------------------------------------------------
def test_a_call_it_cannot_evaluate_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    write(tmp_path / "evil.py", f"""
        import os
        model = dict(type='MoCo')
        data = dict(samples_per_gpu=32)
        result = os.system('touch {marker}')
        open({str(marker)!r}, 'w').write('x')
        lr = (lambda: 1)()
        __import__('os').system('touch {marker}')
    """)
    result = cli("migrate", "evil.py", "-o", "evil.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert not marker.exists() and not (tmp_path / "evil.toml").exists()
    assert result.stderr.splitlines() == [
        f"error: evil.py:4: cannot evaluate statically: os.system('touch {marker}') (uses 'os' imported at line 1; "
        "only 'copy' may be imported and used)",
        f"error: evil.py:5: cannot evaluate statically: open({str(marker)!r}, 'w').write('x') (name 'open' is not "
        "defined before this line in this file)",
        "error: evil.py:6: cannot evaluate statically: (lambda: 1)() (a lambda is not evaluated statically)",
        f"error: evil.py:7: cannot evaluate statically: __import__('os').system('touch {marker}') (name "
        "'__import__' is not defined before this line in this file)",
    ]
    assert result.stdout == ""


@pytest.mark.parametrize("source, message", [
    ("for i in range(3):\n    x = i\n", "t.py:1: cannot evaluate statically: for i in range(3): x = i (a for loop is "
                                       "not evaluated; write the values out)"),
    ("a = 1\nb = undefined_name + 1\nc = b * 2\n", "t.py:2: cannot evaluate statically: undefined_name (name "
                                                 "'undefined_name' is not defined before this line in this file)"),
    ("x = [1, 2]\ny = x.sort(key=len)\n", "t.py:2: cannot evaluate statically: x.sort(key=len) (attribute 'sort' of a list "
                                         "is not evaluated)"),
    ("x = 'a' * 10 ** 9\n", "t.py:1: cannot evaluate statically: 'a' * 10 ** 9 (the result would be too large)"),
    ("x = '{0.__class__}'.format(1)\n", "t.py:1: cannot evaluate statically: '{0.__class__}'.format(1) (format "
                                        "fields with '.' or '[' are not evaluated)"),
    ("x = {{_base_.model}}\n", "t.py:1: cannot evaluate statically: {{_base_.model}} (the _base_ files define no "
                               "'model')"),
    ("def f():\n    pass\n", "t.py:1: cannot evaluate statically: def f(): pass (a function definition is not "
                             "evaluated; write the values out)"),
    ("a = [1] * 1000000\na = a + a\n", "t.py:2: cannot evaluate statically: a + a (the result would be too large)"),
    ("x = 'w_{{_base_.a}}'\n", "t.py:1: cannot evaluate statically: 'w_{{_base_.a}}' (a {{_base_.x}} reference must "
                               "be the whole string; it is not substituted inside a longer one)"),
    ("x = 'a%*d' % (10 ** 9, 1)\n", "t.py:1: cannot evaluate statically: 'a%*d' % (10 ** 9, 1) ('*' widths are not "
                                    "evaluated)"),
    ("x = dict(a=1\n", None),
])
def test_static_evaluator_refusals(tmp_path, source, message):
    path = tmp_path / "t.py"
    path.write_text(source)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ConfigError) as info:
            load_python_config("t.py")
    finally:
        os.chdir(cwd)
    if message is None:
        assert str(info.value).startswith("t.py:1: invalid Python:")
    else:
        assert str(info.value) == message  # one line: what depends on a failed line is not reported again


def test_static_evaluator_supported_forms(tmp_path):
    write(tmp_path / "base.py", """
        a = dict(b=dict(c=[1, 2, 3]), keep=1)
        n = 4
    """)
    path = write(tmp_path / "child.py", """
        _base_ = 'base.py'
        from copy import deepcopy as dc
        x, (y, *z) = 1, (2, 3, 4)
        s = {'k': 1}
        t = {**s, 'j': 2}
        t.update(m=3)
        t['q'] = -x
        lst = list(range(3)) + [len(t), min(5, 6), max([1, 9]), round(2.6), abs(-2), sum([1, 2])]
        lst.insert(0, 'first')
        lst.append(f"{x:03d}-{'v'}")
        v = 'yes' if x > 0 and not y < 0 else 'no'
        w = '%s-%d' % ('a', 5)
        c = {{_base_.a.b.c}}[1:] * 2
        d = dc(t)
        d['k'] += 10
        del d['j']
        e = str(1.5) + 'x'
        k = int('7') // 2 ** 1
        a = dict(b=dict(_delete_=True, e=1))
        __hidden = 1
        if n := 1:
            pass
    """)
    with pytest.raises(ConfigError) as info:
        load_python_config(path)
    assert str(info.value).endswith("child.py:21: cannot evaluate statically: n := 1 (an assignment expression is "
                                    "not evaluated statically)")
    path.write_text(path.read_text().replace("if n := 1:", "if x in (1, 2):"))
    data = load_python_config(path).data
    expected = {
        "x": 1, "y": 2, "z": [3, 4], "s": {"k": 1}, "t": {"k": 1, "j": 2, "m": 3, "q": -1},
        "lst": ["first", 0, 1, 2, 4, 5, 9, 3, 2, 3, "001-v"], "v": "yes", "w": "a-5", "c": [2, 3, 2, 3],
        "d": {"k": 11, "m": 3, "q": -1}, "e": "1.5x", "k": 3, "a": {"b": {"e": 1}, "keep": 1}, "n": 4,
    }
    assert data == expected


def test_base_cycles_and_missing_bases_name_the_file_and_line(tmp_path):
    write(tmp_path / "a.py", "x = 1\n_base_ = ['b.py']\n")
    write(tmp_path / "b.py", "_base_ = 'a.py'\n")
    write(tmp_path / "c.py", "# comment\n_base_ = ['missing.py']\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ConfigError, match=r"^b\.py:1: _base_ files include each other in a cycle: a\.py -> "
                                              r"b\.py -> a\.py$"):
            load_python_config("a.py")
        with pytest.raises(ConfigError, match=r"^c\.py:2: _base_: base file 'missing.py' not found"):
            load_python_config("c.py")
    finally:
        os.chdir(cwd)


def test_out_file_is_not_overwritten_without_force(tmp_path, capsys):
    source = write(tmp_path / "tiny.py", "model = dict(type='MoCo')\n")
    out = tmp_path / "new.toml"
    out.write_text("# mine\n")
    assert main(["migrate", str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out} exists; pass --force to overwrite it\n"
    assert out.read_text() == "# mine\n"
    assert main(["migrate", str(source), "-o", str(out), "--force"]) == 0
    assert tomllib.loads(out.read_text()) == {"model": {"type": "MoCo"}}


def test_the_module_does_not_import_torch():
    code = ("import sys, selfsup_migrate.migrate, selfsup_migrate.static_eval\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_paramwise_differences_follow_mmcv_all_matches_against_our_first_match():
    table = {"bias": {"weight_decay": 0.0}, r"bn\d": {"lr_mult": 0.1}}
    names = ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias"]
    assert paramwise_differences(names, table) == [
        "bn1.bias: the old config gave {'weight_decay': 0.0, 'lr_mult': 0.1}, this one gives {'weight_decay': 0.0}"]
    assert paramwise_differences(names, {"bias": {"weight_decay": 0.0}, "bn": {"weight_decay": 0.0}}) == []
    many = paramwise_differences([f"bn{i}.bias" for i in range(8)], table, limit=2)
    assert len(many) == 3 and many[-1] == "... and 6 more parameters"


def test_check_warns_when_overlapping_paramwise_options_would_change(tmp_path, capsys):
    source = write(tmp_path / "simclr.py", """
        model = dict(
            type='SimCLR',
            backbone=dict(type='ResNet', depth=18, in_channels=3, out_indices=[4], norm_cfg=dict(type='BN')),
            neck=dict(type='NonLinearNeck', in_channels=512, hid_channels=64, out_channels=32, num_layers=2,
                      with_avg_pool=True),
            head=dict(type='ContrastiveHead', temperature=0.1))
        data = dict(imgs_per_gpu=32, workers_per_gpu=2,
                    train=dict(type='ContrastiveDataset', data_source=dict(type='ImageNet', root='data/train'),
                               pipeline=[dict(type='RandomResizedCrop', size=32), dict(type='ToTensor')]))
        optimizer = dict(type='LARS', lr=0.3, momentum=0.9, weight_decay=1e-6,
                         paramwise_options={'bias': dict(weight_decay=0.), r'bn\\d': dict(lars_exclude=True)})
        total_epochs = 1
    """)
    _, _, stderr = migrate(capsys, source, tmp_path / "simclr.toml", "--check")
    assert "warning: optimizer.paramwise_options: MMSelfSup applied every matching expression" in stderr
    assert ("warning:   backbone.bn1.bias: the old config gave {'weight_decay': 0.0, 'lars_exclude': True}, "
            "this one gives {'weight_decay': 0.0}") in stderr
