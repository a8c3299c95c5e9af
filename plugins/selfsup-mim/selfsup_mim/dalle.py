"""The DALL-E dVAE encoder (Ramesh et al., 2021), CAE's target tokenizer, as a component.

Architecture and parameter names as the released ``encoder.pkl`` / MMSelfSup's
``encoder_stat_dict.pth`` (``blocks.input.w``, ``blocks.group_1.block_1.res_path.conv_1.w``,
..., ``blocks.output.conv.b``), so those weights load unchanged: import them with
``selfsup-run import-weights encoder_stat_dict.pth dalle.pth`` and point
``model.head.tokenizer_path`` at the file (nothing is downloaded; without the file the
tokenizer keeps random weights).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DALLEEncoder", "load_tokenizer_weights"]


class _Conv2d(nn.Module):
    """DALL-E's conv: parameters ``w (out, in, k, k)`` and ``b (out,)``, 'same' padding."""

    def __init__(self, n_in: int, n_out: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        w = torch.empty(n_out, n_in, kernel, kernel)
        nn.init.normal_(w, std=1.0 / (n_in * kernel ** 2) ** 0.5)
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w.to(x.dtype), self.b.to(x.dtype), padding=(self.kernel - 1) // 2)


class _EncoderBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int) -> None:
        super().__init__()
        hidden = n_out // 4
        self.post_gain = 1.0 / n_layers ** 2
        self.id_path = _Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", _Conv2d(n_in, hidden, 3)),
            ("relu_2", nn.ReLU()), ("conv_2", _Conv2d(hidden, hidden, 3)),
            ("relu_3", nn.ReLU()), ("conv_3", _Conv2d(hidden, hidden, 3)),
            ("relu_4", nn.ReLU()), ("conv_4", _Conv2d(hidden, n_out, 1)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DALLEEncoder(nn.Module):
    """DALL-E's encoder: images ``(N, C, H, W)`` in DALL-E's pixel map (``0.8 x + 0.1`` of
    [0, 1] pixels) -> code logits ``(N, vocab_size, H/8, W/8)``.

    Args:
        group_count: resolution groups (4: three 2x max-pools).
        n_hid: width of the first group (256); group ``g`` has ``2**(g-1) * n_hid``.
        n_blk_per_group: residual blocks per group (2).
        input_channels: image channels (3).
        vocab_size: codebook size (8192).
    """

    def __init__(self, group_count: int = 4, n_hid: int = 256, n_blk_per_group: int = 2, input_channels: int = 3,
                 vocab_size: int = 8192) -> None:
        super().__init__()
        if min(group_count, n_hid, n_blk_per_group, input_channels, vocab_size) < 1 or n_hid % 4:
            raise ValueError("DALLEEncoder: every size must be >= 1 and n_hid a multiple of 4")
        self.group_count, self.vocab_size = int(group_count), int(vocab_size)
        self.input_channels = int(input_channels)
        n_layers = group_count * n_blk_per_group
        layers: list[tuple[str, nn.Module]] = [("input", _Conv2d(input_channels, n_hid, 7))]
        width = n_hid
        for g in range(1, group_count + 1):
            out = n_hid * 2 ** (g - 1)
            blocks: list[tuple[str, nn.Module]] = []
            for i in range(1, n_blk_per_group + 1):
                blocks.append((f"block_{i}", _EncoderBlock(width if i == 1 else out, out, n_layers)))
            width = out
            if g < group_count:
                blocks.append(("pool", nn.MaxPool2d(kernel_size=2)))
            layers.append((f"group_{g}", nn.Sequential(OrderedDict(blocks))))
        layers.append(("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()),
                                                            ("conv", _Conv2d(width, vocab_size, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(layers))

    @property
    def downsample(self) -> int:
        """Pixels per code along each axis (``2**(group_count-1)``)."""
        return 2 ** (self.group_count - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.input_channels:
            raise ValueError(f"DALLEEncoder: images have {x.shape[1]} channels, input_channels is {self.input_channels}")
        return self.blocks(x.float())


def load_tokenizer_weights(encoder: nn.Module, path: str | os.PathLike[str], key: str) -> None:
    """Load ``path`` (a state dict of the tokenizer's architecture, optionally under an
    ``encoder.`` prefix) into ``encoder``; called when the head is built.

    Raises ``ValueError`` naming the file, the config ``key`` and the first tensor that does not
    fit (a file of another architecture)."""
    from selfsup_core.api import WeightsError, read_state_dict

    try:
        state, _ = read_state_dict(path)
    except (WeightsError, OSError, RuntimeError) as exc:
        raise ValueError(f"{key} = {os.fspath(path)!r}: cannot read it as a tokenizer state dict ({exc})") from None
    if state and all(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items()}
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        first = (f"tensor {mismatched[0]} (file vs model)" if mismatched
                 else f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        raise ValueError(f"{key} = {os.fspath(path)!r} is not a {type(encoder).__name__} of this architecture "
                         f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mismatched "
                         f"tensors; {first}); give the DALL-E encoder weights or fix model.head.tokenizer")
    encoder.load_state_dict({k: state[k] for k in own})
