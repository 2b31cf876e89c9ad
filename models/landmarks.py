"""68-point 2D face landmarks: FAN (the face_alignment project's 2DFAN4) or a box-based estimate.

FAN weights come in two forms, both found as the weights table's ``fan_landmarks`` entry:
- TorchScript archives ``2DFAN4*.zip`` (face_alignment 1.3 / 1.4, e.g. ``2DFAN4-cd938726ad.zip``),
  loaded with ``torch.jit.load``;
- state dicts ``2DFAN4*.pth.tar`` (face_alignment <= 1.2 and >= 1.5, ``2DFAN4-11f355bf06.pth.tar``),
  loaded strictly into the ``FAN`` module below.

Frames are RGB uint8 [H, W, 3]; boxes are (x1, y1, x2, y2) in pixels. Landmarks use the
pixel-index convention of ``cv2.warpAffine`` (pixel (i, j) has its centre at x = j, y = i) and
follow the iBUG 68-point layout (0..16 jaw, 17..26 brows, 27..35 nose, 36..47 eyes, 48..67 mouth).
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lipgraph.models.checkpoint import StateDictMismatchError, load_strict, read_state_dict
from lipgraph.models.face_detection import face_batches

NUM_LANDMARKS = 68
INPUT_SIZE = 256
# face_alignment's crop for S3FD-style boxes (see ``crop_frame``)
CENTER_SHIFT = 0.12
REFERENCE_SCALE = 195.0
CROP_UNIT = 200.0

FAN_CONFIG: Dict[str, int] = {"num_modules": 4, "hourglass_depth": 4, "num_features": 256, "num_landmarks": 68}

Box = Sequence[float]


class FANWeightsError(StateDictMismatchError):
    """A FAN weight file is unreadable or does not match the FAN architecture."""


# --------------------------------------------------------------------------- FAN network


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation residual block whose output concatenates three conv stages (1/2, 1/4, 1/4)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half, quarter = cout // 2, cout // 4
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = _conv3x3(half, quarter)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = _conv3x3(quarter, quarter)
        # Index 1 is a parameter-free ReLU; the checkpoint names entries 0 and 2.
        self.downsample = (
            nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(True), nn.Conv2d(cin, cout, kernel_size=1, bias=False))
            if cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(F.relu(self.bn1(x)))
        b = self.conv2(F.relu(self.bn2(a)))
        c = self.conv3(F.relu(self.bn3(b)))
        skip = x if self.downsample is None else self.downsample(x)
        return torch.cat([a, b, c], dim=1) + skip


class HourGlass(nn.Module):
    """Recursive hourglass; level L has blocks b1_L (skip), b2_L (down), b3_L (up); the bottom adds b2_plus_1."""

    def __init__(self, depth: int, features: int) -> None:
        super().__init__()
        self.depth = depth
        # Registered in the checkpoint's order: b1/b2 going down, b2_plus_1, b3 coming back up.
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(features, features))
            self.add_module(f"b2_{level}", ConvBlock(features, features))
        self.add_module("b2_plus_1", ConvBlock(features, features))
        for level in range(1, depth + 1):
            self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        skip = self._modules[f"b1_{level}"](x)
        low = self._modules[f"b2_{level}"](F.avg_pool2d(x, 2, stride=2))
        low = self._level(level - 1, low) if level > 1 else self._modules["b2_plus_1"](low)
        low = self._modules[f"b3_{level}"](low)
        return skip + F.interpolate(low, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class FAN(nn.Module):
    """Face Alignment Network: stem to 64x64, stacked hourglasses, 68 heatmaps from the last stack."""

    def __init__(self, num_modules: int = 4, hourglass_depth: int = 4, num_features: int = 256, num_landmarks: int = 68):
        super().__init__()
        self.num_modules = num_modules
        f = num_features
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, f)
        for i in range(num_modules):
            self.add_module(f"m{i}", HourGlass(hourglass_depth, f))
            self.add_module(f"top_m_{i}", ConvBlock(f, f))
            self.add_module(f"conv_last{i}", nn.Conv2d(f, f, kernel_size=1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(f))
            self.add_module(f"l{i}", nn.Conv2d(f, num_landmarks, kernel_size=1))
            if i < num_modules - 1:
                self.add_module(f"bl{i}", nn.Conv2d(f, f, kernel_size=1))
                self.add_module(f"al{i}", nn.Conv2d(num_landmarks, f, kernel_size=1))

    @classmethod
    def from_config(cls, config: Dict[str, int]) -> "FAN":
        return cls(**config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.avg_pool2d(self.conv2(x), 2, stride=2)
        x = self.conv4(self.conv3(x))
        features = x
        heatmaps = x
        for i in range(self.num_modules):
            y = self._modules[f"top_m_{i}"](self._modules[f"m{i}"](features))
            y = F.relu(self._modules[f"bn_end{i}"](self._modules[f"conv_last{i}"](y)))
            heatmaps = self._modules[f"l{i}"](y)
            if i < self.num_modules - 1:
                features = features + self._modules[f"bl{i}"](y) + self._modules[f"al{i}"](heatmaps)
        return heatmaps


def load_fan(path: str, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a FAN file (TorchScript ``.zip`` or state-dict ``.pth.tar``), eval mode, gradients off."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FAN weights not found: {path}")
    if not path.endswith(".zip"):
        state = read_state_dict(path, "FAN", FANWeightsError)
        with torch.device("meta"):
            model = FAN.from_config(FAN_CONFIG)
        return load_strict(model, state, path, f"FAN architecture {FAN_CONFIG}", FANWeightsError,
                           device=device, dtype=dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still loads
            module = torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - report the file with the cause
        raise FANWeightsError(f"{path}: not a loadable TorchScript archive ({exc})") from exc
    module = module.to(device=device, dtype=dtype).eval()
    for p in module.parameters():  # a ScriptModule has no requires_grad_()
        p.requires_grad_(False)
    return module


# --------------------------------------------------------------------------- FAN pre/post-processing


def crop_frame(box: Box) -> Tuple[float, float, float]:
    """FAN's crop for a detection box: centre (x, y) and side, in pixels.

    face_alignment's convention for S3FD-style boxes: the centre sits 12 % of the box height above
    the box centre; the side is 200 * (w + h) / 195.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    cx = x2 - (x2 - x1) / 2.0
    cy = y2 - (y2 - y1) / 2.0 - (y2 - y1) * CENTER_SHIFT
    return cx, cy, CROP_UNIT * ((x2 - x1) + (y2 - y1)) / REFERENCE_SCALE


def crop_geometry(box: Box) -> Tuple[int, int, int, int]:
    """Integer pixel window (x0, y0, x1, y1) that is resized into FAN's input.

    As face_alignment computes it: crop pixels 1 and 256 (1-based) mapped back to the image and
    truncated, so the window starts about side / 256 px inside the ideal square.
    """
    cx, cy, side = crop_frame(box)
    x0 = int(side / INPUT_SIZE + cx - side / 2)
    y0 = int(side / INPUT_SIZE + cy - side / 2)
    return x0, y0, int(cx + side / 2), int(cy + side / 2)


def crop_face(frame: np.ndarray, box: Box) -> np.ndarray:
    """256 x 256 RGB crop for FAN: the window of ``crop_geometry``, zero outside the frame, bilinear resize."""
    x0, y0, x1, y1 = crop_geometry(box)
    w, h = max(x1 - x0, 1), max(y1 - y0, 1)
    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    fh, fw = frame.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + w, fw), min(y0 + h, fh)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1, :3]
    return cv2.resize(canvas, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)


def heatmap_peaks(heatmaps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sub-cell peak positions [B, N, 2] (x, y) and peak values [B, N] of heatmaps [B, N, H, W].

    Argmax, then a quarter-cell step towards the higher neighbour on each axis (interior cells
    only). Positions are continuous: cell (i, j) spans [j, j + 1) x [i, i + 1).
    """
    b, n, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, n, h * w)
    idx = flat.argmax(-1)
    scores = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    px, py = idx % w, idx // w
    inner = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    pxc, pyc = np.clip(px, 1, w - 2), np.clip(py, 1, h - 2)
    bi, ni = np.meshgrid(np.arange(b), np.arange(n), indexing="ij")
    dx = heatmaps[bi, ni, pyc, pxc + 1] - heatmaps[bi, ni, pyc, pxc - 1]
    dy = heatmaps[bi, ni, pyc + 1, pxc] - heatmaps[bi, ni, pyc - 1, pxc]
    x = px + 0.5 + np.where(inner, np.sign(dx) * 0.25, 0.0)
    y = py + 0.5 + np.where(inner, np.sign(dy) * 0.25, 0.0)
    return np.stack([x, y], -1), scores


def peaks_to_frame(peaks: np.ndarray, box: Box, heatmap_size: Tuple[int, int]) -> np.ndarray:
    """Heatmap positions [N, 2] -> frame pixel-index coordinates.

    Uses the ideal square of ``crop_frame`` (face_alignment's inverse transform, the same one its
    heatmap targets are drawn with), not the truncated integer window; the two differ by up to
    side / 256 + 1 px. The -0.5 makes the result equal, on average, to face_alignment's integer
    output, which truncates continuous coordinates.
    """
    cx, cy, side = crop_frame(box)
    hh, hw = heatmap_size
    x = cx - side / 2 + peaks[:, 0] * side / hw - 0.5
    y = cy - side / 2 + peaks[:, 1] * side / hh - 0.5
    return np.stack([x, y], -1)


class FANLandmarks:
    """68 landmarks from FAN heatmaps for one face box per frame, batched."""

    def __init__(self, module: nn.Module, device: Union[str, torch.device] = "cpu",
                 dtype: torch.dtype = torch.float32, batch_size: int = 16,
                 source: Optional[str] = None) -> None:
        self.module = module.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.source = source or "FAN"

    @torch.no_grad()
    def _heatmaps(self, crops: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).to(device=self.device, dtype=self.dtype) / 255.0
        out = self.module(x)
        if isinstance(out, (list, tuple)):  # some FAN exports return every stack's heatmaps
            out = out[-1]
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != NUM_LANDMARKS:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise FANWeightsError(f"{self.source}: expected heatmaps [B, 68, H, W], got {shape}")
        return out.float().cpu().numpy()

    def landmarks(self, frames: Sequence[np.ndarray], boxes: Sequence[Box]) -> List[np.ndarray]:
        """One [68, 2] float32 array per (frame, box) pair."""
        results: List[np.ndarray] = []
        for chunk in face_batches(frames, boxes, self.batch_size):
            heatmaps = self._heatmaps(np.stack([crop_face(f, b) for f, b in chunk]))
            peaks, _ = heatmap_peaks(heatmaps)
            for p, (_, box) in zip(peaks, chunk):
                results.append(peaks_to_frame(p, box, heatmaps.shape[2:]).astype(np.float32))
        return results


# --------------------------------------------------------------------------- box-based estimate


def _mean_face() -> np.ndarray:
    """Schematic frontal 68-point face in face-box units ((0, 0) top-left, (1, 1) bottom-right).

    Horizontal: adult anthropometric means (Farkas): bizygomatic width 135 mm, which is taken as
    92 % of the box width, eye corners en-en 32 / ex-ex 90 mm, nose width 34, mouth width 50.
    Vertical: the neoclassical canon (brow line -> nose base = nose base -> chin), anchored to a
    detector box that includes part of the forehead, as S3FD and OpenCV's Haar boxes do: brows at
    0.25 of the box height, chin 5 % below the box bottom (measured on skimage's astronaut with
    its Haar box). On a square box the brow-to-nose drop is then 0.70 of the brow separation;
    published 68-point mean shapes give about 0.73.
    """
    mm = 0.92 / 135.0  # box widths per millimetre
    cx = 0.5
    brow, chin = 0.25, 1.05
    nose_base = (brow + chin) / 2
    eye = brow + 0.28 * (nose_base - brow)
    mouth = nose_base + (chin - nose_base) / 3

    pts = np.zeros((68, 2))
    # jaw 0..16: half ellipse from ear level (eye line) round the chin
    theta = np.linspace(0.0, np.pi, 17)
    pts[0:17, 0] = cx - 0.46 * np.cos(theta)
    pts[0:17, 1] = eye + (chin - eye) * np.sin(theta)
    # brows 17..21 (image left) and 22..26: arcs from 14 to 52 mm off the midline
    t = np.linspace(0.0, 1.0, 5)
    brow_x = (52.0 - 38.0 * t) * mm
    brow_y = brow + 0.035 * (1 - np.sin(np.pi * (0.35 + 0.65 * t))) - 0.02 * np.sin(np.pi * t)
    pts[17:22] = np.stack([cx - brow_x, brow_y], -1)
    pts[22:27] = np.stack([cx + brow_x[::-1], brow_y[::-1]], -1)
    # nose: bridge 27..30 from the eye line to the tip, base 31..35
    pts[27:31, 0] = cx
    pts[27:31, 1] = np.linspace(eye - 0.01, nose_base - 0.04, 4)
    base_x = np.array([-17.0, -8.5, 0.0, 8.5, 17.0]) * mm * 0.85
    pts[31:36] = np.stack([cx + base_x, nose_base - np.array([0.02, 0.005, 0.0, 0.005, 0.02])], -1)
    # eyes 36..41 and 42..47: outer corner, two upper lid points, inner corner, two lower lid points
    half_w, lid = (90.0 - 32.0) / 4 * mm, 0.025
    for start, centre_x, sign in ((36, cx - (90.0 + 32.0) / 4 * mm, -1), (42, cx + (90.0 + 32.0) / 4 * mm, 1)):
        ex = centre_x + sign * half_w * np.array([1.0, 0.35, -0.35, -1.0, -0.35, 0.35])
        ey = eye + np.array([0.0, -lid, -lid, 0.0, lid * 0.8, lid * 0.8])
        pts[start : start + 6] = np.stack([ex, ey], -1)
    # mouth: outer 48..59 and inner 60..67 around the stomion, corners 25 mm off the midline
    half_mouth = 25.0 * mm
    outer_x = cx + half_mouth * np.array([-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0, 0.6, 0.25, 0.0, -0.25, -0.6])
    outer_y = mouth + np.array([0.0, -0.035, -0.05, -0.045, -0.05, -0.035, 0.0, 0.045, 0.06, 0.065, 0.06, 0.045])
    pts[48:60] = np.stack([outer_x, outer_y], -1)
    inner_x = cx + half_mouth * np.array([-0.85, -0.3, 0.0, 0.3, 0.85, 0.3, 0.0, -0.3])
    inner_y = mouth + np.array([0.0, -0.01, -0.01, -0.01, 0.0, 0.01, 0.01, 0.01])
    pts[60:68] = np.stack([inner_x, inner_y], -1)
    return pts


MEAN_FACE = _mean_face()


def box_landmarks(box: Box) -> np.ndarray:
    """Approximate 68 landmarks [68, 2] float32 from a face box (x1, y1, x2, y2).

    The schematic mean face (``MEAN_FACE``) scaled into the box; frontal and upright by
    construction. The LatentSync points land at brows (0.28 W, 0.25 H) / (0.72 W, 0.25 H) and
    nose (0.5 W, 0.57 H) of the box.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"face box must have x2 > x1 and y2 > y1, got {tuple(box)}")
    scale = np.array([x2 - x1, y2 - y1])
    # -0.5: the box spans pixel edges, landmarks are in pixel-index coordinates
    return (MEAN_FACE * scale + np.array([x1, y1]) - 0.5).astype(np.float32)
