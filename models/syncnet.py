"""SyncNet (`syncnet_v2.model` of joonson/syncnet_python): the network that embeds 5-frame
face windows and their MFCC into one space, and its strict loader. The LSE-C / LSE-D scores
built on it are in `models/lse.py`."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
import torch.nn as nn

WEIGHTS_FILENAME = "syncnet_v2.model"
SYNCNET_V2_CONFIG = {"embedding_dim": 1024}

# Conv trunks as (in, out, kernel, stride, padding, pool after or None); each conv is followed
# by BatchNorm and ReLU. The checkpoint names layers by their position in the Sequential, so
# the pools' positions matter.
_AUDIO_TRUNK = [
    (1, 64, 3, 1, 1, ((1, 1), (1, 1), 0)),
    (64, 192, 3, 1, 1, ((3, 3), (1, 2), 0)),
    (192, 384, 3, 1, 1, None),
    (384, 256, 3, 1, 1, None),
    (256, 256, 3, 1, 1, ((3, 3), (2, 2), 0)),
    (256, 512, (5, 4), 1, 0, None),
]
_LIP_TRUNK = [
    (3, 96, (5, 7, 7), (1, 2, 2), 0, ((1, 3, 3), (1, 2, 2), 0)),
    (96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 1, 1))),
    (256, 256, (1, 3, 3), 1, (0, 1, 1), None),
    (256, 256, (1, 3, 3), 1, (0, 1, 1), None),
    (256, 256, (1, 3, 3), 1, (0, 1, 1), ((1, 3, 3), (1, 2, 2), 0)),
    (256, 512, (1, 6, 6), 1, 0, None),
]


def _trunk(table: list, conv: type, norm: type, pool: type) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out, kernel, stride, padding, pooling in table:
        layers += [conv(c_in, c_out, kernel, stride, padding), norm(c_out), nn.ReLU()]
        if pooling is not None:
            layers.append(pool(*pooling))
    return nn.Sequential(*layers)


def _head(embedding_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_dim))


class SyncNet(nn.Module):
    """Two streams into one embedding space: 5 face frames [N, 3, 5, 224, 224] (BGR, 0..255)
    and their MFCC [N, 1, 13, 20]."""

    def __init__(self, embedding_dim: int = 1024) -> None:
        super().__init__()
        # registration order = the checkpoint's key order
        self.netcnnaud = _trunk(_AUDIO_TRUNK, nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
        self.netfcaud = _head(embedding_dim)
        self.netfclip = _head(embedding_dim)
        self.netcnnlip = _trunk(_LIP_TRUNK, nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> "SyncNet":
        config = dict(SYNCNET_V2_CONFIG, **(config or {}))
        unknown = set(config) - set(SYNCNET_V2_CONFIG)
        if unknown:
            raise ValueError(f"unknown SyncNet config keys {sorted(unknown)} (known: embedding_dim)")
        return cls(int(config["embedding_dim"]))

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """[N, 1, 13, 20] MFCC windows -> [N, D]."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def embed_lips(self, frames: torch.Tensor) -> torch.Tensor:
        """[N, 3, 5, 224, 224] BGR crops in 0..255 -> [N, D]."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))

    def forward(self, frames: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_lips(frames), self.embed_audio(mfcc)


def load_syncnet(path: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> SyncNet:
    """Load `syncnet_v2.model` (a plain state dict) strictly; eval mode, gradients off."""
    from .checkpoint import load_strict, read_state_dict
    path = os.fspath(path)
    state = read_state_dict(path, f"SyncNet ({WEIGHTS_FILENAME})")
    with torch.device("meta"):
        model = SyncNet()
    return load_strict(model, state, path, f"SyncNet ({WEIGHTS_FILENAME} layout)", device=device, dtype=dtype)
