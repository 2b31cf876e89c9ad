"""MuseTalk v1.5 UNet: a diffusers `UNet2DConditionModel` run once at timestep 0.

The UNet takes the masked and reference face latents ([B, 8, 32, 32]) and 50 audio tokens of
width 384 and predicts the face latent ([B, 4, 32, 32]) in a single step. Before the UNet the
audio tokens get MuseTalk's fixed sinusoidal positional encoding (a separate module upstream,
so it is not part of `unet.pth`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from diffusers import UNet2DConditionModel

from .positional import sinusoid_table
from .sd_unet_layout import SD_UNET_LAYOUT, block_types
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from lipgraph.models.checkpoint import load_strict, read_diffusers_config, read_state_dict

# Upstream's PositionalEncoding(d_model=384, max_len=5000).
PE_MAX_LEN = 5000

# musetalkV15/musetalk.json as published (diffusers UNet2DConditionModel arguments); its keys
# are in alphabetical order, as the published file writes them.
MUSETALK_V15_UNET_CONFIG: dict[str, Any] = dict(sorted(
    {**SD_UNET_LAYOUT, **block_types("2D"), "in_channels": 8}.items()))


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA (as upstream runs it), fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def unet_config(config_path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict:
    """The UNet2DConditionModel keyword arguments from `musetalk.json` (path or parsed dict)."""
    return read_diffusers_config(config_path_or_dict, "MuseTalk UNet config (musetalk.json)")


def build_musetalk_unet(config_path_or_dict: str | os.PathLike | Mapping[str, Any],
                        device: str | torch.device = "meta") -> UNet2DConditionModel:
    """Construct the UNet from its config; on `meta` nothing is allocated."""
    cfg = unet_config(config_path_or_dict)
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**cfg)
    except TypeError as err:
        raise ValueError(f"bad MuseTalk UNet config {config_path_or_dict!r}: {err}") from err
    # SDPA attention (the diffusers default on torch 2, set explicitly so it cannot drift).
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def audio_positional_encoding(seq_len: int, d_model: int = 384, max_len: int = PE_MAX_LEN,
                              device: str | torch.device | None = None) -> torch.Tensor:
    """``sinusoid_table(seq_len, d_model)``. Upstream adds rows 0..seq_len-1 of a max_len
    table, so positions beyond max_len are an error."""
    if seq_len > max_len:
        raise ValueError(f"{seq_len} audio tokens exceed the positional encoding length {max_len}")
    return sinusoid_table(seq_len, d_model).to(device)


class MuseTalkUNet(nn.Module):
    """The UNet plus MuseTalk's audio positional encoding: latents + audio -> predicted latent."""

    device = property(lambda self: self.unet.device)
    dtype = property(lambda self: self.unet.dtype)

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet
        self.audio_dim = int(unet.config.cross_attention_dim)
        # Kept out of the module's buffers so it stays fp32 when the UNet is cast to half.
        self._pe: torch.Tensor | None = None

    def positional_encoding(self, seq_len: int) -> torch.Tensor:
        pe = self._pe
        if pe is None or pe.shape[0] < seq_len or pe.device != self.device:
            pe = audio_positional_encoding(max(seq_len, 50), self.audio_dim, device=self.device)
            self._pe = pe
        return pe[:seq_len]

    def forward(self, latents: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """latents [B, 8, h, w] (masked + reference), audio [B, T, 384] -> latent [B, 4, h, w]."""
        in_ch = self.unet.config.in_channels
        if latents.ndim != 4 or latents.shape[1] != in_ch:
            raise ValueError(f"latents must be [B, {in_ch}, h, w], got {list(latents.shape)}")
        if audio.ndim != 3 or audio.shape[2] != self.audio_dim or audio.shape[0] != latents.shape[0]:
            raise ValueError(
                f"audio must be [{latents.shape[0]}, T, {self.audio_dim}], got {list(audio.shape)}"
            )
        dtype, device = self.dtype, self.device
        # Add the encoding in at least fp32, then round once to the UNet's precision.
        work = torch.promote_types(dtype, torch.float32)
        audio = audio.to(device=device, dtype=work) + self.positional_encoding(audio.shape[1]).to(work)
        timestep = torch.zeros(latents.shape[0], device=device)
        return self.unet(latents.to(device=device, dtype=dtype), timestep,
                         encoder_hidden_states=audio.to(dtype), return_dict=False)[0]


def load_musetalk_unet(unet_path: str | os.PathLike,
                       config_path_or_dict: str | os.PathLike | Mapping[str, Any],
                       device: str | torch.device = "cpu",
                       dtype: torch.dtype | None = None) -> MuseTalkUNet:
    """Load `unet.pth` (a plain state dict) strictly into the UNet built from `musetalk.json`.

    The model is built on `meta` and the memory-mapped checkpoint tensors are assigned, so the
    3.4 GB file is not held twice. `dtype` None means fp16 on CUDA, fp32 elsewhere.
    """
    unet = build_musetalk_unet(config_path_or_dict, device="meta")
    state = read_state_dict(unet_path, "MuseTalk UNet")
    dtype = default_dtype(device) if dtype is None else dtype
    unet = load_strict(unet, state, unet_path, "MuseTalk UNet", device=device, dtype=dtype)
    return MuseTalkUNet(unet).eval()
