"""Precision resolution: what each ``[runner] precision`` gives on the CPU."""
from __future__ import annotations

import warnings

import pytest
import torch
from selfsup_core.engine import runtime
from selfsup_core.errors import SelfSupError

CPU = torch.device("cpu")


def test_auto_and_fp32_train_in_fp32_on_the_cpu() -> None:
    assert runtime.resolve_precision("auto", CPU) is None
    assert runtime.resolve_precision("fp32", CPU) is None


def test_fp16_is_refused_on_the_cpu() -> None:
    with pytest.raises(SelfSupError, match="precision 'fp16' needs a CUDA device"):
        runtime.resolve_precision("fp16", CPU)


def test_bf16_on_a_cpu_with_native_bf16_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("bf16", CPU) is torch.bfloat16


def test_bf16_on_a_cpu_without_native_bf16_warns_it_is_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated and slower than fp32; use precision = 'fp32'"):
        assert runtime.resolve_precision("bf16", CPU) is torch.bfloat16


def test_native_bf16_check_answers_a_bool() -> None:
    assert isinstance(runtime.cpu_has_native_bf16(), bool)


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_fastest_takes_bf16_only_where_the_cpu_computes_it_natively(
        monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype | None) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # never the "emulated" warning
        assert runtime.resolve_precision("fastest", CPU) is expected
