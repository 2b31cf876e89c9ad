"""Config of the LatentSync UNet3D: the ``model:`` section of ``configs/unet/*.yaml``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from ..sd_unet_layout import SD_UNET_LAYOUT, block_types

# Block type names of the config -> whether the block has spatial transformers.
DOWN_BLOCKS = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}
UP_BLOCKS = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}


@dataclass(frozen=True)
class MotionModuleConfig:
    """``motion_module_kwargs`` of the UNet config (the "Vanilla" temporal module)."""

    num_attention_heads: int = 8
    num_transformer_block: int = 2
    attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self")
    cross_frame_attention_mode: str | None = None
    temporal_position_encoding: bool = False
    temporal_position_encoding_max_len: int = 24
    temporal_attention_dim_div: int = 1
    zero_initialize: bool = True


@dataclass(frozen=True)
class UNet3DConfig:
    """The ``model:`` section of LatentSync's ``configs/unet/*.yaml``; defaults as upstream."""

    sample_size: int | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = tuple(block_types("3D")["down_block_types"])
    mid_block_type: str = "UNetMidBlock3DCrossAttn"
    up_block_types: tuple[str, ...] = tuple(block_types("3D")["up_block_types"])
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    # Upstream's name is misleading: this is the number of heads per block.
    attention_head_dim: int | tuple[int, ...] = 8
    dual_cross_attention: bool = False
    use_linear_projection: bool = False
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    use_inflated_groupnorm: bool = False
    use_motion_module: bool = False
    motion_module_resolutions: tuple[int, ...] = (1, 2, 4, 8)
    motion_module_mid_block: bool = False
    motion_module_decoder_only: bool = False
    motion_module_type: str | None = None
    motion_module_kwargs: MotionModuleConfig = field(default_factory=MotionModuleConfig)
    add_audio_layer: bool = False

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "UNet3DConfig":
        """Build from a config mapping; keys starting with ``_`` are ignored, unknown keys refused."""
        if isinstance(cfg, UNet3DConfig):
            return cfg
        values = _tuples({k: v for k, v in dict(cfg).items() if not k.startswith("_")})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"UNet3D config: unknown keys {unknown}")
        mm = values.get("motion_module_kwargs", {})
        if not isinstance(mm, MotionModuleConfig):
            bad = sorted(set(mm) - {f.name for f in fields(MotionModuleConfig)})
            if bad:
                raise ValueError(f"UNet3D config: unknown motion_module_kwargs keys {bad}")
            mm = MotionModuleConfig(**_tuples(mm))
        config = cls(**dict(values, motion_module_kwargs=mm))
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse options this implementation does not provide (none of them are used by LatentSync)."""
        n, mm, motion = len(self.block_out_channels), self.motion_module_kwargs, self.use_motion_module
        down = next((t for t in self.down_block_types if t not in DOWN_BLOCKS), None)
        up = next((t for t in self.up_block_types if t not in UP_BLOCKS), None)
        checks = (
            ("block type lists whose length differs from block_out_channels",
             len(self.down_block_types) != n or len(self.up_block_types) != n),
            (f"down block type {down!r}", down is not None),
            (f"up block type {up!r}", up is not None),
            (f"mid_block_type {self.mid_block_type!r}", self.mid_block_type != "UNetMidBlock3DCrossAttn"),
            (f"act_fn {self.act_fn!r}", self.act_fn not in ("silu", "swish")),
            (f"resnet_time_scale_shift {self.resnet_time_scale_shift!r}",
             self.resnet_time_scale_shift != "default"),
            ("dual_cross_attention", self.dual_cross_attention),
            ("use_linear_projection", self.use_linear_projection),
            ("class embeddings", self.class_embed_type is not None or self.num_class_embeds is not None),
            ("attention_head_dim list whose length differs from block_out_channels",
             isinstance(self.attention_head_dim, tuple) and len(self.attention_head_dim) != n),
            (f"motion_module_type {self.motion_module_type!r}",
             motion and self.motion_module_type != "Vanilla"),
            (f"motion-module attention types {list(mm.attention_block_types)}",
             motion and any(t != "Temporal_Self" for t in mm.attention_block_types)),
            ("cross_frame_attention_mode", motion and mm.cross_frame_attention_mode is not None),
        )
        refused = next((what for what, bad in checks if bad), None)
        if refused:
            raise ValueError(f"UNet3D config: {refused} is not supported")

    def heads(self) -> tuple[int, ...]:
        """Number of spatial attention heads per down block."""
        if isinstance(self.attention_head_dim, int):
            return (self.attention_head_dim,) * len(self.block_out_channels)
        return tuple(self.attention_head_dim)

    def max_frames(self) -> int | None:
        """Frame limit set by the temporal positional encoding (None: no limit)."""
        mm = self.motion_module_kwargs
        if self.use_motion_module and mm.temporal_position_encoding:
            return mm.temporal_position_encoding_max_len
        return None


def _tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def read_unet_config(config: Mapping[str, Any] | str | os.PathLike) -> UNet3DConfig:
    """Config from a mapping or a ``.json``/``.yaml`` file; a ``model:`` section is used if present."""
    if isinstance(config, UNet3DConfig):
        return config
    source = "config"
    if isinstance(config, (str, os.PathLike)):
        source = os.fspath(config)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"UNet3D config file not found: {source}")
        with open(source, "r", encoding="utf-8") as fh:
            if source.endswith(".json"):
                config = json.load(fh)
            else:
                import yaml

                config = yaml.safe_load(fh)
    if not isinstance(config, Mapping):
        raise ValueError(f"{source}: expected a mapping of UNet3D config values")
    if isinstance(config.get("model"), Mapping):
        config = config["model"]
    try:
        return UNet3DConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from exc


# The `model:` section of LatentSync's configs/unet/stage2.yaml (v1.5, 256 px) as published;
# stage2_512.yaml (v1.6, 512 px) has the same section.
LATENTSYNC_STAGE2_CONFIG: dict[str, Any] = {
    **SD_UNET_LAYOUT,
    **block_types("3D"),
    "add_audio_layer": True,
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "in_channels": 13,
    "resnet_time_scale_shift": "default",
    "use_motion_module": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": False,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 8,
        "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"],
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 24,
        "temporal_attention_dim_div": 1,
        "zero_initialize": True,
    },
}
