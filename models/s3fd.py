"""S3FD face detector (single-shot, scale-invariant; VGG-16 trunk with six prediction heads).

The module layout mirrors the face_alignment project's ``s3fd-619a316812.pth`` checkpoint
(65 tensors, 22.5 M parameters), which MuseTalk uses as-is, so it loads strictly.

Conventions of the checkpoint:
- input in 0..255 with the per-channel mean (104, 117, 123) subtracted, no scaling. The
  network was trained on BGR, and face_alignment (LatentSync 1.5's detector) feeds BGR; MuseTalk
  flips cv2's BGR frames to RGB before its copy of the detector, so its network sees RGB minus
  that mean. ``S3FDDetector(channel_order=...)`` does either;
- head ``i`` (i = 0..5) has stride ``4 * 2**i`` and one square anchor of side ``4 * stride``
  centred at ``stride / 2 + index * stride``; offsets decode SSD-style with variances (0.1, 0.2);
- the first head predicts 3 background logits and 1 face logit; the backgrounds are max-ed
  into one ("max-out background label") before the 2-way softmax;
- reference post-processing: candidates scoring > 0.05, NMS at IoU 0.3, then keep > 0.5.
"""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lipgraph.models.checkpoint import StateDictMismatchError, load_strict, read_state_dict
from lipgraph.models.face_detection import check_frame, network_size, nms

WEIGHTS_FILENAME = "s3fd-619a316812.pth"

MEAN_BGR = (104.0, 117.0, 123.0)
STRIDES = (4, 8, 16, 32, 64, 128)
ANCHOR_SCALE = 4  # anchor side = 4 * stride: 16, 32, ..., 512 px
VARIANCES = (0.1, 0.2)
MIN_INPUT_SIDE = 32  # five 2x poolings must leave at least one cell
# Prediction heads, finest first: (feature they read, its channels, logit channels); the first
# has 3 background logits (max-ed into one) and the face logit.
HEADS = (("conv3_3_norm", 256, 4), ("conv4_3_norm", 512, 2), ("conv5_3_norm", 512, 2), ("fc7", 1024, 2),
         ("conv6_2", 512, 2), ("conv7_2", 256, 2))


class S3FDWeightsError(StateDictMismatchError):
    """A checkpoint does not match the S3FD architecture (or cannot be read as one)."""


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = 1e-10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Sum of squares over 256-512 unbounded ReLU channels overflows fp16: work in fp32.
        x32 = x.float()
        norm = x32.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return (x32 / norm * self.weight.float().view(1, -1, 1, 1)).to(x.dtype)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=padding)


class S3FD(nn.Module):
    """S3FD network. ``forward`` returns six ``(face_logits [B,2,h,w], loc [B,4,h,w])`` pairs,
    finest (stride 4) first; channel 1 of the logits is the face class."""

    def __init__(self) -> None:
        super().__init__()
        # Attribute names and registration order follow the checkpoint's state_dict order.
        self.conv1_1 = _conv(3, 64)
        self.conv1_2 = _conv(64, 64)
        self.conv2_1 = _conv(64, 128)
        self.conv2_2 = _conv(128, 128)
        self.conv3_1 = _conv(128, 256)
        self.conv3_2 = _conv(256, 256)
        self.conv3_3 = _conv(256, 256)
        self.conv4_1 = _conv(256, 512)
        self.conv4_2 = _conv(512, 512)
        self.conv4_3 = _conv(512, 512)
        self.conv5_1 = _conv(512, 512)
        self.conv5_2 = _conv(512, 512)
        self.conv5_3 = _conv(512, 512)
        # fc6 of this port is an undilated 3x3 conv with padding 3: its map is 4 cells wider
        # than the image / 32 on each axis; the decode below keeps the checkpoint's anchor grid.
        self.fc6 = _conv(512, 1024, 3, 1, 3)
        self.fc7 = _conv(1024, 1024, 1, 1, 0)
        self.conv6_1 = _conv(1024, 256, 1, 1, 0)
        self.conv6_2 = _conv(256, 512, 3, 2, 1)
        self.conv7_1 = _conv(512, 128, 1, 1, 0)
        self.conv7_2 = _conv(128, 256, 3, 2, 1)

        self.conv3_3_norm = L2Norm(256, 10.0)
        self.conv4_3_norm = L2Norm(512, 8.0)
        self.conv5_3_norm = L2Norm(512, 5.0)

        for name, channels, logits in HEADS:
            setattr(self, f"{name}_mbox_conf", _conv(channels, logits))
            setattr(self, f"{name}_mbox_loc", _conv(channels, 4))

    @classmethod
    def from_config(cls, config: dict | None = None) -> "S3FD":
        """Build from a config dict. S3FD has no size options, so the dict must be empty."""
        if config:
            raise ValueError(f"S3FD takes no config options, got {sorted(config)}")
        return cls()

    @staticmethod
    def _block(x: torch.Tensor, convs: Sequence[nn.Conv2d]) -> torch.Tensor:
        for conv in convs:
            x = F.relu(conv(x))
        return x

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        h = self._block(x, (self.conv1_1, self.conv1_2))
        h = self._block(F.max_pool2d(h, 2, 2), (self.conv2_1, self.conv2_2))
        f3 = self._block(F.max_pool2d(h, 2, 2), (self.conv3_1, self.conv3_2, self.conv3_3))
        f4 = self._block(F.max_pool2d(f3, 2, 2), (self.conv4_1, self.conv4_2, self.conv4_3))
        f5 = self._block(F.max_pool2d(f4, 2, 2), (self.conv5_1, self.conv5_2, self.conv5_3))
        f7 = self._block(F.max_pool2d(f5, 2, 2), (self.fc6, self.fc7))
        f6_2 = self._block(f7, (self.conv6_1, self.conv6_2))
        f7_2 = self._block(f6_2, (self.conv7_1, self.conv7_2))

        feats = (self.conv3_3_norm(f3), self.conv4_3_norm(f4), self.conv5_3_norm(f5), f7, f6_2, f7_2)
        outs = [(getattr(self, f"{name}_mbox_conf")(f), getattr(self, f"{name}_mbox_loc")(f))
                for (name, _, _), f in zip(HEADS, feats)]
        conf1, loc1 = outs[0]
        outs[0] = (torch.cat([conf1[:, 0:3].amax(dim=1, keepdim=True), conf1[:, 3:4]], dim=1), loc1)
        return outs


def load_s3fd(path: str | os.PathLike, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> S3FD:
    """Load ``s3fd-619a316812.pth`` strictly; returns the model in eval mode, gradients off."""
    path = os.fspath(path)
    state = read_state_dict(path, "S3FD face detector", S3FDWeightsError)
    bad = [f"{k} ({v.dtype})" for k, v in state.items() if not v.is_floating_point()]
    if bad:
        raise S3FDWeightsError(f"{path}: entries that are not floating-point tensors: {', '.join(bad[:12])}")
    with torch.device("meta"):
        model = S3FD()
    return load_strict(model, state, path, f"S3FD face detector ({WEIGHTS_FILENAME} layout)",
                       S3FDWeightsError, device=device, dtype=dtype)


def decode_s3fd(outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                score_threshold: float) -> list[torch.Tensor]:
    """Turn head outputs into per-image candidate boxes ``[K, 5]`` (x1, y1, x2, y2, score) in
    network-input pixels, keeping scores strictly above ``score_threshold``. Unsorted, no NMS."""
    batch = outputs[0][0].shape[0]
    per_image: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    for level, (logits, loc) in enumerate(outputs):
        stride = float(STRIDES[level])
        anchor = stride * ANCHOR_SCALE
        score = torch.softmax(logits.float(), dim=1)[:, 1]  # [B, h, w]
        b, iy, ix = torch.nonzero(score > score_threshold, as_tuple=True)
        if b.numel() == 0:
            continue
        d = loc.float()[b, :, iy, ix]  # [N, 4]: dx, dy, dw, dh
        cx = (ix.float() * stride + stride / 2) + d[:, 0] * VARIANCES[0] * anchor
        cy = (iy.float() * stride + stride / 2) + d[:, 1] * VARIANCES[0] * anchor
        w = anchor * torch.exp(d[:, 2] * VARIANCES[1])
        h = anchor * torch.exp(d[:, 3] * VARIANCES[1])
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score[b, iy, ix]], 1)
        for i in torch.unique(b).tolist():
            per_image[i].append(boxes[b == i])
    empty = outputs[0][0].new_zeros((0, 5), dtype=torch.float32)
    return [torch.cat(parts) if parts else empty for parts in per_image]


class S3FDDetector:
    """Batched S3FD inference on RGB uint8 frames with the reference post-processing."""

    name = "s3fd"

    def __init__(self, model: S3FD, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, score_threshold: float = 0.5,
                 nms_threshold: float = 0.3, max_side: int | None = None,
                 batch_size: int = 8, channel_order: str = "bgr") -> None:
        if max_side is not None and max_side < MIN_INPUT_SIDE:
            raise ValueError(f"max_side must be >= {MIN_INPUT_SIDE}, got {max_side}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be rgb or bgr, got {channel_order!r}")
        self.flip = channel_order == "bgr"      # frames arrive RGB
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = max_side
        self.batch_size = int(batch_size)
        self._mean = torch.tensor(MEAN_BGR, device=self.device).view(1, 3, 1, 1)

    def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Faces per frame: float32 ``[K, 5]`` (x1, y1, x2, y2, score) in the frame's own
        pixels, best score first; ``[0, 5]`` when none."""
        for i, frame in enumerate(frames):
            check_frame(frame, i)
        results: list[np.ndarray | None] = [None] * len(frames)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(frames):
            groups.setdefault(frame.shape[:2], []).append(i)
        for (height, width), indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                boxes = self._detect_same_size([frames[i] for i in chunk], height, width)
                for i, b in zip(chunk, boxes):
                    results[i] = b
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _detect_same_size(self, frames: list[np.ndarray], height: int, width: int) -> list[np.ndarray]:
        net_h, net_w = network_size(height, width, self.max_side)
        if min(net_h, net_w) < MIN_INPUT_SIDE:
            raise ValueError(
                f"frame {width}x{height} is too small for S3FD after resizing to {net_w}x{net_h}: "
                f"both sides must be >= {MIN_INPUT_SIDE} px"
            )
        if (net_h, net_w) != (height, width):
            frames = [cv2.resize(f, (net_w, net_h), interpolation=cv2.INTER_AREA) for f in frames]
        # Ship uint8 to the device; convert there (4x less transfer than float).
        batch = torch.from_numpy(np.stack(frames)).to(self.device, non_blocking=True)
        x = batch.permute(0, 3, 1, 2)
        if self.flip:
            x = x.flip(1)
        x = x.float() - self._mean
        outputs = self.model(x.to(self.dtype))
        # Filtering at the final threshold before NMS keeps the same boxes as the reference
        # (NMS at 0.05, then > 0.5): a box can only be suppressed by a higher-scoring one.
        candidates = decode_s3fd(outputs, self.score_threshold)
        sx, sy = width / net_w, height / net_h
        results = []
        for cand in candidates:
            cand = cand.cpu().numpy()
            cand = cand[nms(cand, cand[:, 4], self.nms_threshold)]
            cand[:, [0, 2]] = np.clip(cand[:, [0, 2]] * sx, 0, width)
            cand[:, [1, 3]] = np.clip(cand[:, [1, 3]] * sy, 0, height)
            valid = (cand[:, 2] > cand[:, 0]) & (cand[:, 3] > cand[:, 1])
            results.append(np.ascontiguousarray(cand[valid], dtype=np.float32))
        return results
