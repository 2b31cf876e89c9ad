"""LatentSync's fixed inpainting mask, drawn by code, and the helpers that apply it.

Convention (as upstream): 1 = keep the pixel, 0 = region the UNet regenerates. The mask lives in
the aligned, square face image (see ``vision.latentsync_align``).

Geometry in 256 px coordinates, fitted to upstream ``latentsync/utils/mask.png`` (IoU 0.989):
- rows 95..127: only the two cheek bands, columns 9..77 and 178..246; the notch between them
  keeps the nose;
- rows 128..242: the part of an ellipse centred at (x 128, y 141) with semi-axes 119.5 x 101.5
  that lies below row 128, i.e. nearly full width, narrowing to a rounded jaw.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence, Union

import cv2
import numpy as np
import torch

# Geometry in the 256 px frame; pixel (i, j) covers [j, j + 1) x [i, i + 1).
_CHEEK_TOP, _CHEEK_BOTTOM = 95.0, 128.0
_CHEEK_BANDS = ((9.0, 78.0), (178.0, 247.0))
_JAW_CENTER = (128.0, 141.0)
_JAW_SEMI_AXES = (119.5, 101.5)

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


class MaskFileError(ValueError):
    """A user-supplied mask image cannot be read."""


def latentsync_mask(size: int = 256) -> np.ndarray:
    """The fixed LatentSync mask, float32 [size, size], 1 = keep, 0 = regenerate.

    Each pixel is classified at its centre, mapped into the 256 px frame, so any size works.
    """
    if size <= 0:
        raise ValueError(f"mask size must be positive, got {size}")
    scale = 256.0 / size
    centres = (np.arange(size, dtype=np.float64) + 0.5) * scale
    y, x = np.meshgrid(centres, centres, indexing="ij")

    cheek_rows = (y >= _CHEEK_TOP) & (y < _CHEEK_BOTTOM)
    cheek_cols = np.zeros_like(cheek_rows)
    for left, right in _CHEEK_BANDS:
        cheek_cols |= (x >= left) & (x < right)
    cheeks = cheek_rows & cheek_cols

    cx, cy = _JAW_CENTER
    ax, ay = _JAW_SEMI_AXES
    jaw = (y >= _CHEEK_BOTTOM) & (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0)

    return np.where(cheeks | jaw, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def keep_mask(size: int, path: str = "") -> np.ndarray:
    """The mask the pipeline uses (cached): a user-supplied file when `path` is given, else
    the one drawn by code. Read-only."""
    mask = load_mask(path, size) if path else latentsync_mask(size)
    mask.setflags(write=False)
    return mask


def load_mask(path: str, size: int) -> np.ndarray:
    """A user mask image (white = keep, black = regenerate) as float32 [size, size] in [0, 1].

    Read as grayscale and resized with Lanczos like upstream does with its PNG.
    """
    if not os.path.isfile(path):
        raise MaskFileError(f"mask image not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise MaskFileError(f"cannot decode mask image {path}: expected a grayscale or RGB image file")
    if image.shape != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LANCZOS4)
    return (image.astype(np.float32) / 255.0).clip(0.0, 1.0)


def _to_unit_range(face: ArrayOrTensor) -> ArrayOrTensor:
    """uint8 [0, 255] -> float32 [-1, 1]; float input is taken to be in [-1, 1] already."""
    if isinstance(face, np.ndarray) and face.dtype == np.uint8:
        return face.astype(np.float32) / 127.5 - 1.0
    if isinstance(face, torch.Tensor) and face.dtype == torch.uint8:
        return face.to(torch.float32) / 127.5 - 1.0
    return face


def _broadcast_mask(mask: ArrayOrTensor, face: ArrayOrTensor) -> ArrayOrTensor:
    """Shape the [H, W] (or [1, H, W]) mask to multiply a face laid out as the face is."""
    if isinstance(face, torch.Tensor):
        m = torch.as_tensor(mask, dtype=face.dtype, device=face.device)
        if m.ndim == 3:
            m = m[0]
        if face.shape[-2:] != m.shape:
            raise ValueError(f"mask {tuple(m.shape)} does not match face [..., C, H, W] {tuple(face.shape)}")
        return m  # broadcasts over [..., C, H, W]
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == 3:
        m = m[0]
    if face.shape[:2] != m.shape:
        raise ValueError(f"mask {m.shape} does not match face [H, W, C] {face.shape}")
    return m[:, :, None]


def masked_image(face: ArrayOrTensor, mask: ArrayOrTensor) -> ArrayOrTensor:
    """The UNet's masked input: face in [-1, 1] times the mask.

    Masked pixels become 0 in [-1, 1], i.e. mid-gray 127.5, exactly as upstream
    (``normalize(image / 255) * mask``). ``face`` is a numpy [H, W, C] array or a torch
    [..., C, H, W] tensor; uint8 faces are first normalised to [-1, 1]. The result is in [-1, 1].
    """
    face = _to_unit_range(face)
    return face * _broadcast_mask(mask, face)


def keep_surroundings(generated: ArrayOrTensor, original: ArrayOrTensor, mask: ArrayOrTensor) -> ArrayOrTensor:
    """generated * (1 - mask) + original * mask: only the masked region comes from the model.

    Both faces in the same layout and range ([-1, 1] floats, or uint8 which are normalised).
    """
    generated, original = _to_unit_range(generated), _to_unit_range(original)
    m = _broadcast_mask(mask, generated)
    return generated * (1 - m) + original * m


def latent_mask(mask: ArrayOrTensor, latent_size: Union[int, Sequence[int]]) -> ArrayOrTensor:
    """The UNet's mask channel: the mask resized (nearest) to latent size -> [1, h, w].

    Index choice matches torch ``interpolate(mode="nearest")`` (source index floor(i * in / out)),
    which upstream uses. Returns the input's type (numpy float32 or torch tensor).
    """
    if isinstance(latent_size, int):
        h, w = latent_size, latent_size
    else:
        h, w = (int(v) for v in latent_size)
    is_tensor = isinstance(mask, torch.Tensor)
    m = mask.detach().cpu().numpy() if is_tensor else np.asarray(mask)
    if m.ndim == 3:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W] or [1, H, W], got shape {m.shape}")
    src_h, src_w = m.shape
    # float32 scale, as torch computes it, so indices agree at every size
    rows = np.minimum(np.floor(np.arange(h, dtype=np.float32) * np.float32(src_h / h)).astype(np.int64), src_h - 1)
    cols = np.minimum(np.floor(np.arange(w, dtype=np.float32) * np.float32(src_w / w)).astype(np.int64), src_w - 1)
    out = m[np.ix_(rows, cols)][None].astype(np.float32)
    if is_tensor:
        return torch.from_numpy(out).to(device=mask.device, dtype=mask.dtype)
    return out
