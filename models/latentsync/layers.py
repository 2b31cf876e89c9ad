"""Layers of the LatentSync UNet3D; frames are folded into the batch as ``[(B*F), C, H, W]``.

Attribute names mirror the checkpoint keys of ``latentsync_unet.pt``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward  # GEGLU; `net.1` is a dropout, as upstream
from torch import nn

from ..positional import sinusoid_table
from .config import MotionModuleConfig

# The fused CUDA attention kernels put the batch in a grid dimension capped at 65535;
# temporal attention has one row per pixel per clip, so large batches are split.
_SDPA_MAX_BATCH = 32768


class PositionalEncoding(nn.Module):
    """Fixed temporal sinusoid; a persistent buffer because the checkpoint carries it."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, dim)[None])


# --------------------------------------------------------------------------- norms, convs


class ClipGroupNorm(nn.GroupNorm):
    """GroupNorm over folded frames whose statistics pool over every frame of a clip.

    Matches upstream's ``nn.GroupNorm`` on ``[B, C, F, H, W]`` bit for bit; ``per_frame``
    gives the "inflated" variant (statistics per frame).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float, per_frame: bool = False):
        super().__init__(num_groups, num_channels, eps=eps)
        self.per_frame = per_frame

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        if self.per_frame or num_frames == 1:
            return super().forward(x)
        bf, c, h, w = x.shape
        clip = x.view(bf // num_frames, num_frames, c, h * w).transpose(1, 2)
        out = F.group_norm(clip, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(bf, c, h, w)


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float,
                 output_scale_factor: float = 1.0, per_frame_norm: bool = False):
        super().__init__()
        self.norm1 = ClipGroupNorm(groups, in_channels, eps, per_frame_norm)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = ClipGroupNorm(groups, out_channels, eps, per_frame_norm)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, num_frames)))
        t = self.time_emb_proj(F.silu(temb))  # [B, C], one per clip
        h = h + t.repeat_interleave(num_frames, dim=0)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h, num_frames)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        # Nearest to the skip's size: 2x normally, and exact when the input size was odd.
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


# --------------------------------------------------------------------------- attention


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if q.shape[0] <= _SDPA_MAX_BATCH:
        return F.scaled_dot_product_attention(q, k, v)
    parts = zip(q.split(_SDPA_MAX_BATCH), k.split(_SDPA_MAX_BATCH), v.split(_SDPA_MAX_BATCH))
    return torch.cat([F.scaled_dot_product_attention(*p) for p in parts])


class Attention(nn.Module):
    """Multi-head attention; q/k/v without bias, output projection with bias."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        return x.view(n, length, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        out = _sdpa(q, k, v)
        n, _, length, _ = out.shape
        return self.to_out[0](out.transpose(1, 2).reshape(n, length, -1))


class BasicTransformerBlock(nn.Module):
    """Per-frame self-attention, audio cross-attention, GEGLU feed-forward (pre-norm)."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, audio: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        if audio:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, head_dim, context_dim=cross_attention_dim)
        else:
            self.norm2 = self.attn2 = None
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and audio is not None:
            x = self.attn2(self.norm2(x), audio) + x
        return self.ff(self.norm3(x)) + x


class Transformer3DModel(nn.Module):
    """Spatial transformer applied to each frame independently (1x1 conv projections)."""

    def __init__(self, channels: int, heads: int, groups: int, cross_attention_dim: int, audio: bool):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim, audio)]
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(n, h * w, c)
        for block in self.transformer_blocks:
            y = block(y, audio)
        y = y.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(y) + x


# --------------------------------------------------------------------------- motion module


class TemporalAttention(Attention):
    """Self-attention across the frames at each spatial position, after adding the sinusoid."""

    def __init__(self, dim: int, heads: int, head_dim: int, max_len: int | None):
        super().__init__(dim, heads, head_dim)
        self.pos_encoder = PositionalEncoding(dim, max_len) if max_len else None

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        bf, s, c = x.shape
        b = bf // num_frames
        t = x.view(b, num_frames, s, c).transpose(1, 2)  # [b, s, f, c]
        if self.pos_encoder is not None:
            t = t + self.pos_encoder.pe[0, :num_frames]
        out = super().forward(t.reshape(b * s, num_frames, c))
        return out.view(b, s, num_frames, c).transpose(1, 2).reshape(bf, s, c)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, n_attn: int, max_len: int | None):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, heads, head_dim, max_len) for _ in range(n_attn)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(n_attn)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), num_frames) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, cfg: MotionModuleConfig):
        super().__init__()
        head_dim = channels // cfg.num_attention_heads // cfg.temporal_attention_dim_div
        inner = cfg.num_attention_heads * head_dim
        max_len = cfg.temporal_position_encoding_max_len if cfg.temporal_position_encoding else None
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)  # 32 groups hard-coded upstream
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [
                TemporalTransformerBlock(inner, cfg.num_attention_heads, head_dim,
                                         len(cfg.attention_block_types), max_len)
                for _ in range(cfg.num_transformer_block)
            ]
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c))
        for block in self.transformer_blocks:
            y = block(y, num_frames)
        y = self.proj_out(y).reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()
        return y + x


class MotionModule(nn.Module):
    def __init__(self, channels: int, cfg: MotionModuleConfig):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, cfg)
        if cfg.zero_initialize:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, num_frames)
