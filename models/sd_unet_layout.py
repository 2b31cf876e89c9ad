"""The Stable Diffusion 1.x UNet layout that MuseTalk's and LatentSync's published UNet configs
share: everything but the block types (2D or 3D), the input channels and LatentSync's extras."""

from __future__ import annotations

from typing import Any

SD_UNET_LAYOUT: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
}


def block_types(dim: str) -> dict[str, list[str]]:
    """The SD 1.x down and up block type names for `dim` "2D" or "3D"."""
    return {
        "down_block_types": [f"CrossAttnDownBlock{dim}"] * 3 + [f"DownBlock{dim}"],
        "up_block_types": [f"UpBlock{dim}"] + [f"CrossAttnUpBlock{dim}"] * 3,
    }
