"""Strict loader for ``latentsync_unet.pt``."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from lipgraph.models.checkpoint import StateDictMismatchError, check_state_dict, read_state_dict

from .config import read_unet_config
from .layers import sinusoid_table
from .unet3d import UNet3DConditionModel


class UNetCheckpointError(StateDictMismatchError):
    """The checkpoint does not match the UNet built from the config (or cannot be read)."""


_PE_SUFFIX = ".pos_encoder.pe"
_PE_TOLERANCE = 1e-4


def load_latentsync_unet(path: str | os.PathLike, config: Mapping[str, Any] | str | os.PathLike,
                         device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> UNet3DConditionModel:
    """Load ``latentsync_unet.pt`` strictly into a UNet built from ``config`` (eval, no grad).

    The file is memory-mapped and the model built on the meta device, so each tensor is
    copied once into its final device/dtype and the checkpoint is never held twice in RAM.
    ``pos_encoder.pe`` buffers may be absent from the file (they are recomputed); when present
    they must equal the sinusoid.
    """
    path = os.fspath(path)
    cfg = read_unet_config(config)
    state = read_state_dict(path, "LatentSync UNet", UNetCheckpointError)
    with torch.device("meta"):
        model = UNet3DConditionModel(cfg)
    expected = model.state_dict()

    check_state_dict({k: tuple(v.shape) for k, v in expected.items()}, state, path,
                     "LatentSync UNet3D config", error=UNetCheckpointError,
                     optional={k for k in expected if k.endswith(_PE_SUFFIX)})
    bad_pe = [
        k for k, v in expected.items()
        if k.endswith(_PE_SUFFIX) and k in state and not torch.allclose(
            state[k].float(), sinusoid_table(v.shape[1], v.shape[2])[None], atol=_PE_TOLERANCE, rtol=0)
    ]
    if bad_pe:
        raise UNetCheckpointError(f"{path}: positional encodings that are not the fixed sinusoid "
                                  f"({len(bad_pe)}): {', '.join(bad_pe)}")

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
