"""LatentSync's fixed inpainting mask, drawn by code, and the helpers that apply it.

Convention (as upstream): 1 = keep the pixel, 0 = region the UNet regenerates. The mask lives in
the aligned, square face image (see ``vision.latentsync_align``).

Upstream reads `latentsync/utils/mask.png` (256 x 256, binary) and resizes it with Lanczos to
the UNet's resolution, which gives soft edges at 512. The pipeline uses that file when it is
found (``find_official_mask``) and otherwise draws the same pixels from the table below, so
both routes give identical masks at 256 and, resized the same way, at 512:
- rows 95..127: only the two cheek bands, columns 9..77 and 178..246; the notch between them
  keeps the nose;
- rows 128..242: one run per row, from ``_JAW_LEFT`` to ``_JAW_RIGHT`` (exclusive), nearly
  full width, narrowing to a rounded jaw.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence, Union

import cv2
import numpy as np
import torch

BASE_SIZE = 256
_CHEEK_ROWS = (95, 128)
_CHEEK_BANDS = ((9, 78), (178, 247))
_JAW_TOP = 128
_JAW_LEFT = (9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10,
             11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12,
             13, 13, 14, 14, 15, 15, 16, 16, 17, 18, 18, 19, 19, 20, 21, 21, 22, 22, 23, 24, 25,
             26, 26, 27, 28, 29, 30, 31, 32, 33, 34, 34, 35, 36, 37, 38, 39, 40, 42, 43, 44, 45,
             47, 48, 49, 51, 52, 54, 56, 57, 59, 60, 62, 64, 66, 68, 70, 72, 74, 76, 78, 80, 82,
             85, 87, 90, 93, 95, 99, 104, 108, 131)
_JAW_RIGHT = (248, 248, 248, 248, 248, 248, 248, 247, 247, 247, 247, 247, 247, 247, 247, 247,
              247, 247, 247, 247, 247, 246, 246, 246, 246, 246, 246, 246, 246, 246, 246, 246,
              246, 246, 246, 245, 245, 245, 245, 245, 245, 245, 244, 244, 243, 243, 242, 242,
              241, 241, 240, 239, 239, 238, 237, 237, 236, 235, 235, 234, 233, 233, 232, 231,
              231, 230, 229, 229, 228, 227, 226, 225, 224, 224, 223, 222, 221, 220, 219, 218,
              217, 216, 215, 214, 213, 212, 211, 209, 208, 207, 205, 204, 203, 201, 200, 198,
              197, 195, 193, 192, 190, 188, 186, 184, 181, 179, 176, 174, 172, 169, 167, 165,
              161, 157, 153)
# where a LatentSync checkout (or a weights folder beside one) keeps the official file
MASK_LOCATIONS = (os.path.join("latentsync", "utils", "mask.png"), "mask.png",
                  os.path.join("..", "latentsync", "utils", "mask.png"))

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


class MaskFileError(ValueError):
    """A user-supplied mask image cannot be read."""


def _base_mask() -> np.ndarray:
    """The 256 x 256 mask as uint8 0/255 (255 = keep), like the PNG's pixels."""
    mask = np.full((BASE_SIZE, BASE_SIZE), 255, np.uint8)
    top, bottom = _CHEEK_ROWS
    for left, right in _CHEEK_BANDS:
        mask[top:bottom, left:right] = 0
    for row, (left, right) in enumerate(zip(_JAW_LEFT, _JAW_RIGHT), start=_JAW_TOP):
        mask[row, left:right] = 0
    return mask


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    """Upstream's resize of the 256 px mask to the UNet's resolution, in [0, 1]."""
    if image.shape != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LANCZOS4)
    return (image.astype(np.float32) / 255.0).clip(0.0, 1.0)


def latentsync_mask(size: int = 256) -> np.ndarray:
    """The fixed LatentSync mask, float32 [size, size], 1 = keep, 0 = regenerate: the official
    pixels at 256, resized as upstream resizes its PNG at other sizes."""
    if size <= 0:
        raise ValueError(f"mask size must be positive, got {size}")
    return _resized(_base_mask(), size)


def find_official_mask(weights_dir: str | None) -> str:
    """The official `mask.png` under a LatentSync checkout or its `checkpoints/` folder, or ''."""
    if not weights_dir:
        return ""
    root = os.path.expanduser(weights_dir)
    for rel in MASK_LOCATIONS:
        path = os.path.normpath(os.path.join(root, rel))
        if os.path.isfile(path):
            return path
    return ""


@functools.lru_cache(maxsize=8)
def keep_mask(size: int, path: str = "") -> np.ndarray:
    """The mask the pipeline uses (cached): a user-supplied file when `path` is given, else
    the one drawn by code. Read-only."""
    mask = load_mask(path, size) if path else latentsync_mask(size)
    mask.setflags(write=False)
    return mask


def load_mask(path: str, size: int) -> np.ndarray:
    """A mask image (white = keep, black = regenerate) as float32 [size, size] in [0, 1].

    Read as grayscale and resized with Lanczos like upstream does with its PNG.
    """
    if not os.path.isfile(path):
        raise MaskFileError(f"mask image not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise MaskFileError(f"cannot decode mask image {path}: expected a grayscale or RGB image file")
    return _resized(image, size)


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
        # the cached mask is read-only: a copy, which torch may write to
        m = torch.as_tensor(np.array(mask) if isinstance(mask, np.ndarray) else mask,
                            dtype=face.dtype, device=face.device)
        m = m[0] if m.ndim == 3 else m
        if face.shape[-2:] != m.shape:
            raise ValueError(f"mask {tuple(m.shape)} does not match face [..., C, H, W] {tuple(face.shape)}")
        return m  # broadcasts over [..., C, H, W]
    m = np.asarray(mask, dtype=np.float32)
    m = m[0] if m.ndim == 3 else m
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


def _nearest(size_in: int, size_out: int) -> np.ndarray:
    # float32 scale, as torch computes it, so indices agree at every size
    scale = np.float32(size_in / size_out)
    return np.minimum(np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64), size_in - 1)


def latent_mask(mask: ArrayOrTensor, latent_size: Union[int, Sequence[int]]) -> ArrayOrTensor:
    """The UNet's mask channel: the mask resized (nearest) to latent size -> [1, h, w].

    Index choice matches torch ``interpolate(mode="nearest")`` (source index floor(i * in / out)),
    which upstream uses. Returns the input's type (numpy float32 or torch tensor).
    """
    h, w = (latent_size,) * 2 if isinstance(latent_size, int) else (int(v) for v in latent_size)
    is_tensor = isinstance(mask, torch.Tensor)
    m = mask.detach().cpu().numpy() if is_tensor else np.asarray(mask)
    if m.ndim == 3:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W] or [1, H, W], got shape {m.shape}")
    out = m[np.ix_(_nearest(m.shape[0], h), _nearest(m.shape[1], w))][None].astype(np.float32)
    if is_tensor:
        return torch.from_numpy(out).to(device=mask.device, dtype=mask.dtype)
    return out
