"""SD VAE (sd-vae-ft-mse, diffusers AutoencoderKL) with MuseTalk's and LatentSync's ways of using it.

Both projects scale latents by 0.18215 with no shift. MuseTalk encodes each 256x256 face crop
twice: once with its lower half blacked out (the region to re-draw) and once whole (the
reference), and feeds the UNet the two latents stacked on channels, masked first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from diffusers import AutoencoderKL

from lipgraph.models.musetalk_unet import default_dtype
from lipgraph.models.checkpoint import load_strict, read_diffusers_config, read_state_dict

SCALING_FACTOR = 0.18215
SHIFT_FACTOR = 0.0

# stabilityai/sd-vae-ft-mse config.json (published file, 547 bytes), minus diffusers bookkeeping.
SD_VAE_FT_MSE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Checkpoints written before diffusers 0.12 name the mid-block attention layers differently.
_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def build_vae(config: str | os.PathLike | Mapping[str, Any] = SD_VAE_FT_MSE_CONFIG,
              device: str | torch.device = "meta") -> AutoencoderKL:
    """Construct an AutoencoderKL from its config; on `meta` nothing is allocated."""
    with torch.device(device):
        return AutoencoderKL(**read_diffusers_config(config, "VAE config (config.json)"))


def _rename_legacy_attention(vae: AutoencoderKL, state: Mapping[str, Any]) -> dict:
    prefixes = [name + "." for name, module in vae.named_modules()
                if getattr(module, "_from_deprecated_attn_block", False)]
    renamed = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                layer, _, param = key[len(prefix):].partition(".")
                if layer in _LEGACY_ATTENTION_NAMES and param in ("weight", "bias"):
                    key = f"{prefix}{_LEGACY_ATTENTION_NAMES[layer]}.{param}"
                break
        renamed[key] = value
    return renamed


def _locate(path: Path, config: Any) -> tuple[Path, Any]:
    """(weights file, config) from a folder or a weights file, config defaulting to config.json beside it."""
    if path.is_dir():
        folder = path
        weights = next((path / n for n in WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"no VAE weights in {path}: expected {' or '.join(WEIGHT_NAMES)}")
    elif path.is_file():
        folder, weights = path.parent, path
    else:
        raise FileNotFoundError(f"VAE folder or weights file not found: {path}")
    return weights, (folder / "config.json" if config is None else config)


class SDVAE:
    """AutoencoderKL wrapper: uint8 RGB images <-> scaled latents."""

    device = property(lambda self: self.vae.device)
    dtype = property(lambda self: self.vae.dtype)

    def __init__(self, vae: AutoencoderKL, scaling_factor: float = SCALING_FACTOR,
                 shift_factor: float = SHIFT_FACTOR):
        self.vae = vae
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor

    def to_pixels(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB [B, H, W, 3] -> [B, 3, H, W] in [-1, 1] on the VAE's device and dtype."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            got = getattr(images, "dtype", type(images))
            raise TypeError(f"images must be uint8 arrays or tensors, got {got}")
        if images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"images must be [B, H, W, 3] RGB, got {list(images.shape)}")
        x = images.to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x.to(self.dtype)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [-1, 1] -> scaled latents [B, 4, H/8, W/8] (mean unless `sample`)."""
        dist = self.vae.encode(pixels.to(device=self.device, dtype=self.dtype)).latent_dist
        z = dist.sample(generator=generator) if sample else dist.mean
        return (z - self.shift_factor) * self.scaling_factor

    def encode(self, images: np.ndarray | torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 RGB [B, H, W, 3] -> scaled latents [B, 4, H/8, W/8]."""
        return self.encode_pixels(self.to_pixels(images), sample, generator)

    def encode_musetalk(self, crops: np.ndarray | torch.Tensor, sample: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """256x256 uint8 RGB face crops [B, 256, 256, 3] -> UNet input [B, 8, 32, 32].

        Channels 0-3: the crop with its lower half (rows 128..255) set to black (-1);
        channels 4-7: the whole crop as the reference. Both go through one batched encode.
        """
        pixels = self.to_pixels(crops)
        masked = pixels.clone()
        masked[:, :, pixels.shape[2] // 2:, :] = -1.0
        z = self.encode_pixels(torch.cat([masked, pixels]), sample, generator)
        n = pixels.shape[0]
        return torch.cat([z[:n], z[n:]], dim=1)

    @torch.no_grad()
    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, 4, h, w] -> decoded pixels [B, 3, 8h, 8w], nominally in [-1, 1]."""
        z = latents.to(device=self.device, dtype=self.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z, return_dict=False)[0]

    def decode(self, latents: torch.Tensor, to_numpy: bool = True) -> np.ndarray | torch.Tensor:
        """Scaled latents [B, 4, h, w] -> uint8 RGB [B, 8h, 8w, 3].

        Returns a numpy array, or with `to_numpy=False` a tensor left on the VAE's device.
        """
        x = self.decode_pixels(latents).float()
        images = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        return images.cpu().numpy() if to_numpy else images


def load_vae(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
             config: str | os.PathLike | Mapping[str, Any] | None = None) -> SDVAE:
    """Load an sd-vae folder (config.json + diffusion_pytorch_model.safetensors or .bin) strictly.

    `path` may also be the weights file itself; `config` defaults to config.json beside it.
    `dtype` None means fp16 on CUDA, fp32 elsewhere.
    """
    dtype = default_dtype(device) if dtype is None else dtype
    weights, config = _locate(Path(path), config)
    vae = build_vae(config, device="meta")
    state = _rename_legacy_attention(vae, read_state_dict(weights, "VAE"))
    return SDVAE(load_strict(vae, state, weights, "VAE (AutoencoderKL)", device=device, dtype=dtype))
