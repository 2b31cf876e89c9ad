"""LatentSync 1.5 / 1.6 denoising UNet (``UNet3DConditionModel``).

An AnimateDiff-style inflated Stable Diffusion UNet: spatial layers run per frame with the
frames folded into the batch, audio tokens enter through cross-attention, and temporal
"motion modules" attend across the frames of a clip. Module attribute names mirror the keys
of ``latentsync_unet.pt`` so the checkpoint loads without renaming.

Layout: internally every activation is folded as ``[(B*F), C, H, W]`` (batch outer, frame
inner). Frames interact in exactly two places, as upstream:

* the motion modules (temporal self-attention over F at each pixel), and
* the GroupNorms of the resnets and of ``conv_norm_out``, whose statistics pool over all
  frames of a clip, because upstream applies ``nn.GroupNorm`` to ``[B, C, F, H, W]`` (unless
  ``use_inflated_groupnorm`` is set, which no released config does).

The spatial-transformer and motion-module GroupNorms are per frame. Clips in the batch never
interact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from torch import nn

from .config import DOWN_BLOCKS, UP_BLOCKS, MotionModuleConfig, UNet3DConfig
from .layers import ClipGroupNorm, Downsample, MotionModule, ResnetBlock3D, Transformer3DModel, Upsample


@dataclass(frozen=True)
class _BlockSpec:
    in_channels: int
    out_channels: int
    temb_channels: int
    num_layers: int
    groups: int
    eps: float
    heads: int
    cross_attention_dim: int
    audio: bool
    cross: bool  # has spatial transformers
    motion: MotionModuleConfig | None
    per_frame_norm: bool


class _Layers(nn.Module):
    """Shared per-layer step: resnet -> spatial transformer (if any) -> motion module (if any)."""

    attentions: nn.ModuleList  # empty without cross-attention
    resnets: nn.ModuleList
    motion_modules: nn.ModuleList | None

    def _register(self, spec: _BlockSpec, resnet_channels: Sequence[tuple[int, int]], channels: int) -> None:
        # Attribute order = checkpoint key order: attentions, resnets, motion_modules.
        # Empty rather than None when absent (no state-dict keys either way): DeepCacheSDHelper
        # iterates ``getattr(block, "attentions", [])`` of every block, as upstream's blocks allow.
        self.attentions = nn.ModuleList(
            [Transformer3DModel(channels, spec.heads, spec.groups, spec.cross_attention_dim, spec.audio)
             for _ in resnet_channels]
            if spec.cross
            else []
        )
        self.resnets = nn.ModuleList(
            [ResnetBlock3D(i, o, spec.temb_channels, spec.groups, spec.eps, per_frame_norm=spec.per_frame_norm)
             for i, o in resnet_channels]
        )
        self.motion_modules = (
            nn.ModuleList([MotionModule(channels, spec.motion) for _ in resnet_channels]) if spec.motion else None
        )

    def layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor | None,
              num_frames: int) -> torch.Tensor:
        x = self.resnets[i](x, temb, num_frames)
        if len(self.attentions):
            x = self.attentions[i](x, audio)
        if self.motion_modules is not None:
            x = self.motion_modules[i](x, num_frames)
        return x


class DownBlock3D(_Layers):
    def __init__(self, spec: _BlockSpec, add_downsample: bool, downsample_padding: int):
        super().__init__()
        chans = [(spec.in_channels if i == 0 else spec.out_channels, spec.out_channels)
                 for i in range(spec.num_layers)]
        self._register(spec, chans, spec.out_channels)
        self.downsamplers = (
            nn.ModuleList([Downsample(spec.out_channels, downsample_padding)]) if add_downsample else None
        )

    def forward(self, x, temb, audio, num_frames) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self.layer(i, x, temb, audio, num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock3D(_Layers):
    def __init__(self, spec: _BlockSpec, prev_channels: int, add_upsample: bool):
        super().__init__()
        # spec.in_channels is the channel count of the deepest skip this block consumes.
        chans = []
        for i in range(spec.num_layers):
            skip = spec.in_channels if i == spec.num_layers - 1 else spec.out_channels
            prev = prev_channels if i == 0 else spec.out_channels
            chans.append((prev + skip, spec.out_channels))
        self._register(spec, chans, spec.out_channels)
        self.upsamplers = nn.ModuleList([Upsample(spec.out_channels)]) if add_upsample else None

    def layer_with_skip(self, i, x, skip, temb, audio, num_frames) -> torch.Tensor:
        return self.layer(i, torch.cat([x, skip], dim=1), temb, audio, num_frames)

    def forward(self, x, skips: Sequence[torch.Tensor], temb, audio, num_frames,
                upsample_size: Sequence[int] | None = None) -> torch.Tensor:
        for i in range(len(self.resnets)):
            x = self.layer_with_skip(i, x, skips[-1 - i], temb, audio, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNetMidBlock3DCrossAttn(nn.Module):
    def __init__(self, spec: _BlockSpec, output_scale_factor: float):
        super().__init__()
        c = spec.in_channels
        self.attentions = nn.ModuleList(
            [Transformer3DModel(c, spec.heads, spec.groups, spec.cross_attention_dim, spec.audio)]
        )
        self.resnets = nn.ModuleList(
            [ResnetBlock3D(c, c, spec.temb_channels, spec.groups, spec.eps, output_scale_factor,
                           spec.per_frame_norm) for _ in range(2)]
        )
        self.motion_modules = nn.ModuleList([MotionModule(c, spec.motion)]) if spec.motion else None

    def forward(self, x, temb, audio, num_frames) -> torch.Tensor:
        x = self.resnets[0](x, temb, num_frames)
        x = self.attentions[0](x, audio)
        if self.motion_modules is not None:
            x = self.motion_modules[0](x, num_frames)
        return self.resnets[1](x, temb, num_frames)


# --------------------------------------------------------------------------- UNet


@dataclass
class DeepCacheState:
    """Deep feature kept by a full step for the following shallow (DeepCache) steps.

    ``feature`` is the input of the last layer of the final up block (before its skip concat),
    folded ``[(B*F), C0, H, W]``; it already contains that block's earlier motion modules.
    """

    feature: torch.Tensor
    batch: int
    num_frames: int


def deepcache_is_full_step(step_index: int, cache_interval: int) -> bool:
    """Upstream's uniform schedule: step 0 and every ``cache_interval``-th step run in full."""
    return cache_interval <= 1 or step_index % cache_interval == 0


class UNet3DConditionModel(nn.Module):
    """LatentSync denoiser: ``[B, 13, F, H, W]`` + timestep + audio tokens -> noise ``[B, 4, F, H, W]``.

    DeepCache (``forward_full`` / ``forward_shallow``, upstream's ``cache_branch_id=0``):
    a shallow step recomputes only the time embedding, ``conv_in``, the LAST layer of the final
    up block (``up_blocks[-1].resnets[-1]``, ``.attentions[-1]``, ``.motion_modules[-1]``, fed
    the cached feature concatenated with the fresh ``conv_in`` output) and
    ``conv_norm_out``/``conv_out``. Every down block, the mid block, the other up blocks and
    the earlier layers of the final up block are reused from the last full step.
    This is what ``DeepCache.DeepCacheSDHelper`` computes (tests/test_deepcache_parity.py); the
    helper also reruns those earlier layers' motion modules on their cached inputs, which only
    reproduces the cached values, so they are skipped here.
    """

    def __init__(self, config: UNet3DConfig):
        super().__init__()
        self.config = config
        c = config
        chans = c.block_out_channels
        temb_dim = chans[0] * 4
        heads = c.heads()
        mm = c.motion_module_kwargs if c.use_motion_module else None

        def spec(cin, cout, layers, n_heads, cross, motion):
            return _BlockSpec(cin, cout, temb_dim, layers, c.norm_num_groups, c.norm_eps, n_heads,
                              c.cross_attention_dim, c.add_audio_layer, cross, motion,
                              c.use_inflated_groupnorm)

        # Registration order follows the checkpoint's key order (up blocks precede the mid block).
        self.conv_in = nn.Conv2d(c.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb_dim)

        self.down_blocks = nn.ModuleList()
        prev = chans[0]
        for i, name in enumerate(c.down_block_types):
            use_mm = mm if (2**i in c.motion_module_resolutions and not c.motion_module_decoder_only) else None
            block_spec = spec(prev, chans[i], c.layers_per_block, heads[i], DOWN_BLOCKS[name], use_mm)
            self.down_blocks.append(DownBlock3D(block_spec, i < len(chans) - 1, c.downsample_padding))
            prev = chans[i]

        self.up_blocks = nn.ModuleList()
        rev, rev_heads = list(reversed(chans)), list(reversed(heads))
        prev = rev[0]
        for i, name in enumerate(c.up_block_types):
            # Upstream hard-codes the resolution index as 3 - i.
            use_mm = mm if 2 ** (3 - i) in c.motion_module_resolutions else None
            skip_in = rev[min(i + 1, len(chans) - 1)]
            block_spec = spec(skip_in, rev[i], c.layers_per_block + 1, rev_heads[i], UP_BLOCKS[name], use_mm)
            self.up_blocks.append(UpBlock3D(block_spec, prev, i < len(chans) - 1))
            prev = rev[i]

        mid_spec = spec(chans[-1], chans[-1], 1, heads[-1], True, mm if c.motion_module_mid_block else None)
        self.mid_block = UNetMidBlock3DCrossAttn(mid_spec, c.mid_block_scale_factor)

        self.conv_norm_out = ClipGroupNorm(c.norm_num_groups, chans[0], c.norm_eps, c.use_inflated_groupnorm)
        self.conv_out = nn.Conv2d(chans[0], c.out_channels, 3, padding=1)

        # Upstream zero-initialises these, so an unloaded model predicts zeros.
        for conv in (self.conv_in, self.conv_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | UNet3DConfig) -> "UNet3DConditionModel":
        """Build from the ``model:`` section dict of a LatentSync UNet config."""
        return cls(UNet3DConfig.from_dict(config))

    dtype = property(lambda self: self.conv_in.weight.dtype)

    # ------------------------------------------------------------------ inputs

    def _prepare(self, sample, timestep, encoder_hidden_states):
        if sample.dim() != 5 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"sample must be [B, {self.config.in_channels}, F, H, W], got {list(sample.shape)}"
            )
        b, c, f, h, w = sample.shape
        limit = self.config.max_frames()
        if limit is not None and f > limit:
            raise ValueError(
                f"clip of {f} frames exceeds the motion modules' positional-encoding length {limit}; "
                f"split the video into windows of at most {limit} frames"
            )
        dtype = self.dtype
        x = sample.to(dtype).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        if self.config.center_input_sample:
            x = 2 * x - 1.0

        t = torch.as_tensor(timestep, device=sample.device)
        if t.dim() == 0:
            t = t[None]
        if t.dim() != 1 or t.shape[0] not in (1, b):
            raise ValueError(f"timestep must be a scalar or hold 1 or B={b} values, got shape {list(t.shape)}")
        c0 = self.config.block_out_channels[0]
        t_feat = get_timestep_embedding(t.expand(b), c0, self.config.flip_sin_to_cos, self.config.freq_shift)
        temb = self.time_embedding(t_feat.to(dtype))

        audio = encoder_hidden_states
        if audio is not None:
            if audio.dim() == 4:
                if audio.shape[:2] != (b, f):
                    raise ValueError(f"encoder_hidden_states [B, F, L, C] must have B={b}, F={f}, "
                                     f"got {list(audio.shape)}")
                audio = audio.reshape(b * f, *audio.shape[2:])
            if audio.dim() != 3 or audio.shape[0] != b * f or audio.shape[-1] != self.config.cross_attention_dim:
                raise ValueError(
                    f"encoder_hidden_states must be [B*F={b * f}, L, {self.config.cross_attention_dim}] or "
                    f"[B={b}, F={f}, L, {self.config.cross_attention_dim}], got {list(encoder_hidden_states.shape)}"
                )
            audio = audio.to(dtype)
        return x, temb, audio, (b, f, h, w)

    def _finish(self, x: torch.Tensor, num_frames: int, dims) -> torch.Tensor:
        b, f, h, w = dims
        x = self.conv_out(F.silu(self.conv_norm_out(x, num_frames)))
        return x.view(b, f, -1, h, w).permute(0, 2, 1, 3, 4).contiguous()

    # ------------------------------------------------------------------ forward

    def forward_full(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                     encoder_hidden_states: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, DeepCacheState]:
        """Complete step; also returns the deep feature for later ``forward_shallow`` steps."""
        x, temb, audio, dims = self._prepare(sample, timestep, encoder_hidden_states)
        f = dims[1]
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, res = block(x, temb, audio, f)
            skips.extend(res)
        x = self.mid_block(x, temb, audio, f)
        for block in self.up_blocks[:-1]:
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            x = block(x, res, temb, audio, f, upsample_size=skips[-1].shape[-2:])
        final = self.up_blocks[-1]
        n = len(final.resnets)
        for i in range(n - 1):
            x = final.layer_with_skip(i, x, skips[-1 - i], temb, audio, f)
        cache = DeepCacheState(feature=x, batch=dims[0], num_frames=f)
        x = final.layer_with_skip(n - 1, x, skips[0], temb, audio, f)
        return self._finish(x, f, dims), cache

    def forward_shallow(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                        encoder_hidden_states: torch.Tensor | None, cache: DeepCacheState) -> torch.Tensor:
        """DeepCache step: only the outermost layers run, the deep feature comes from ``cache``."""
        x, temb, audio, dims = self._prepare(sample, timestep, encoder_hidden_states)
        b, f, h, w = dims
        feat = cache.feature
        expected = (b * f, self.config.block_out_channels[0], h, w)
        if (cache.batch, cache.num_frames) != (b, f) or tuple(feat.shape) != expected:
            raise ValueError(
                f"DeepCache feature {list(feat.shape)} (B={cache.batch}, F={cache.num_frames}) does not fit "
                f"this input (expected {list(expected)}); run forward_full first"
            )
        final = self.up_blocks[-1]
        x = final.layer_with_skip(len(final.resnets) - 1, feat.to(x.dtype), self.conv_in(x), temb, audio, f)
        return self._finish(x, f, dims)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise ``[B, out_channels, F, H, W]``.

        ``encoder_hidden_states``: audio tokens ``[B*F, L, C]`` (batch outer) or ``[B, F, L, C]``;
        None skips the audio cross-attention as upstream does.
        """
        return self.forward_full(sample, timestep, encoder_hidden_states)[0]
