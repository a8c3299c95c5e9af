"""Frozen stages shared by the backbones: ``requires_grad=False`` and eval mode that lasts
through ``train()``."""
from __future__ import annotations

from typing import TypeVar

from torch import nn

__all__ = ["FrozenStagesMixin"]

_M = TypeVar("_M", bound=nn.Module)


class FrozenStagesMixin:
    """For a module with ``frozen_stages`` (``-1`` = nothing frozen).

    Subclasses list the frozen sub-modules in :meth:`_frozen_modules` (empty when
    ``frozen_stages < 0``) and the frozen bare parameters (tokens, position embeddings; ``None``
    entries skipped) in :meth:`_frozen_parameters`.
    """

    frozen_stages: int

    def _frozen_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _frozen_parameters(self) -> list[nn.Parameter | None]:
        return []

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        for param in self._frozen_parameters():
            if param is not None:
                param.requires_grad_(False)
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self: _M, mode: bool = True) -> _M:
        """Set train/eval mode; frozen parts stay in eval mode."""
        super().train(mode)  # type: ignore[misc]
        if mode:
            for module in self._frozen_modules():  # type: ignore[attr-defined]
                module.eval()
        return self
