"""The fixed sinusoidal table both UNets use (MuseTalk on its audio tokens, LatentSync in
its motion modules): sin on even channels, cos on odd ones, base 10000, computed in float32
as the models were trained with (a float64 table differs by ~3e-6)."""
from __future__ import annotations

import math

import torch


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """``[length, dim]`` float32: row p is sin/cos(p / 10000^(2i/dim)) interleaved."""
    if dim % 2:
        raise ValueError(f"a sinusoid table needs an even width, got {dim}")
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table
