"""Strict loader for ``latentsync_unet.pt``."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from .config import read_unet_config
from .layers import sinusoid_table
from .unet3d import UNet3DConditionModel


class UNetCheckpointError(ValueError):
    """The checkpoint does not match the UNet built from the config."""


_PE_SUFFIX = ".pos_encoder.pe"
_PE_TOLERANCE = 1e-4


def _names(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _shape(shape) -> str:
    return "x".join(str(s) for s in shape) or "scalar"


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LatentSync UNet checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(path)
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                # Files in the legacy (non-zip) format cannot be memory-mapped.
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UNetCheckpointError(f"{path}: cannot read the LatentSync UNet checkpoint: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UNetCheckpointError(
            f"{path}: expected {{'state_dict': {{name: tensor}}}} or a bare state dict of tensors"
        )
    return dict(obj)


def load_latentsync_unet(path: str | os.PathLike, config: Mapping[str, Any] | str | os.PathLike,
                         device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> UNet3DConditionModel:
    """Load ``latentsync_unet.pt`` strictly into a UNet built from ``config`` (eval, no grad).

    The file is memory-mapped and the model built on the meta device, so each tensor is
    copied once into its final device/dtype and the checkpoint is never held twice in RAM. ``pos_encoder.pe`` buffers may be absent from the file
    (they are recomputed); when present they must equal the sinusoid.
    """
    path = os.fspath(path)
    cfg = read_unet_config(config)
    state = _read_state_dict(path)
    with torch.device("meta"):
        model = UNet3DConditionModel(cfg)
    expected = model.state_dict()

    missing = [k for k in expected if k not in state and not k.endswith(_PE_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} (file {_shape(state[k].shape)}, expected {_shape(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    bad_pe = []
    for k, v in expected.items():
        if k.endswith(_PE_SUFFIX) and k in state and tuple(state[k].shape) == tuple(v.shape):
            ref = sinusoid_table(v.shape[1], v.shape[2])[None]
            if not torch.allclose(state[k].float(), ref, atol=_PE_TOLERANCE, rtol=0):
                bad_pe.append(k)
    if missing or unexpected or wrong or bad_pe:
        lines = [f"LatentSync UNet checkpoint {path} does not match the UNet3D config "
                 f"({len(expected)} entries expected, file has {len(state)}):"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {_names(missing)}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {_names(unexpected)}")
        if wrong:
            lines.append(f"  wrong shape ({len(wrong)}): {_names(wrong, 6)}")
        if bad_pe:
            lines.append(f"  positional encodings that are not the fixed sinusoid ({len(bad_pe)}): {_names(bad_pe)}")
        raise UNetCheckpointError("\n".join(lines))

    device = torch.device(device)
    tensors = {}
    for k, v in expected.items():
        t = state[k] if k in state else sinusoid_table(v.shape[1], v.shape[2])[None]
        # Always a copy: parameters must not stay backed by the mapped file.
        tensors[k] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
    del state
    model.load_state_dict(tensors, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()
