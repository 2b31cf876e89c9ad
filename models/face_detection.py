"""Choosing a face detector (S3FD when its weights exist, else the Haar cascade), what the
detectors share (IoU, NMS, frame checks, resizing) and picking one face per frame."""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Protocol, Sequence

import numpy as np
import torch

from .weight_finder import find_weights

KINDS = ("auto", "s3fd", "haar")


class FallbackWarning(UserWarning):
    """A component fell back to a weaker substitute because something was missing."""


class FaceDetector(Protocol):
    name: str

    def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]: ...


def _options_for(cls: type, options: dict) -> dict:
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "model", "device", "dtype"}
    return {k: v for k, v in options.items() if k in accepted}


def build_face_detector(kind: str = "auto", weights_dir: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                        **thresholds) -> FaceDetector:
    """Build a detector with ``.detect(frames)`` and ``.name`` ("s3fd" or "haar").

    ``kind="auto"`` uses S3FD when ``s3fd-619a316812.pth`` is found (the weights table's
    ``s3fd`` entry), else the Haar cascade with one ``FallbackWarning``. ``thresholds`` go to the
    detector's constructor (e.g. ``score_threshold``, ``max_side``, ``min_neighbors``); with
    "auto", options the chosen detector does not take are dropped, with an explicit kind they
    raise TypeError.
    ``dtype`` defaults to float32: the checkpoint was trained in fp32 and its raw 0..255 input
    gives large early activations, so fp16 is opt-in.
    """
    from .haar_face import HaarFaceDetector
    from .s3fd import S3FDDetector, load_s3fd

    if kind not in KINDS:
        raise ValueError(f"face detector kind must be one of {KINDS}, got {kind!r}")
    unknown = set(thresholds) - set(_options_for(S3FDDetector, thresholds)) - set(
        _options_for(HaarFaceDetector, thresholds))
    if unknown:
        raise TypeError(f"unknown face detector option(s): {sorted(unknown)}")

    path = missing = None
    if kind in ("auto", "s3fd"):
        # Any file at a known place is used: a damaged one fails loudly in load_s3fd.
        found, missing = find_weights(weights_dir, ["s3fd"], check_size=False)
        path = found.get("s3fd")
    if kind == "s3fd" and missing is not None:
        raise missing
    if path is not None:
        dtype = dtype or torch.float32
        options = thresholds if kind == "s3fd" else _options_for(S3FDDetector, thresholds)
        return S3FDDetector(load_s3fd(path, device=device, dtype=dtype), device=device,
                            dtype=dtype, **options)

    if thresholds.get("max_side", 0) is None:       # full resolution means S3FD's; the
        thresholds = {k: v for k, v in thresholds.items() if k != "max_side"}  # cascade keeps 640
    if kind == "auto":
        warnings.warn(
            "S3FD weights not found, falling back to OpenCV's Haar cascade, which misses turned "
            f"faces and gives rougher boxes.\n{missing}", FallbackWarning, stacklevel=2,
        )
        return HaarFaceDetector(**_options_for(HaarFaceDetector, thresholds))
    return HaarFaceDetector(**thresholds)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (x1, y1, x2, y2, ...) with each row of ``boxes``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    boxes = boxes.reshape(-1, boxes.shape[-1])
    box = np.asarray(box, dtype=np.float64)
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS, best score first; a box is dropped when its IoU with a kept
    one exceeds ``threshold``. Areas count pixels inclusively (+1), as the reference S3FD and
    InsightFace post-processing do, so the same overlaps are suppressed."""
    x1, y1, x2, y2 = (np.asarray(boxes)[:, i].astype(np.float64) for i in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
    return np.asarray(keep, dtype=np.int64)


def check_frame(frame: np.ndarray, index: int) -> None:
    """Refuse anything but an H x W x 3 uint8 RGB array, naming the frame."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frame {index}: expected an HxWx3 uint8 RGB array, got {desc}")


def network_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) a frame is resized to so that its longer side is at most ``max_side``."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def face_batches(frames: Sequence[np.ndarray], boxes: Sequence, batch_size: int):
    """The (frame, box) pairs in lists of at most `batch_size`; there must be a box per frame."""
    if len(frames) != len(boxes):
        raise ValueError(f"got {len(frames)} frames but {len(boxes)} boxes")
    pairs = list(zip(frames, boxes))
    for start in range(0, len(pairs), batch_size):
        yield pairs[start:start + batch_size]


def iou(a, b) -> float:
    """IoU of two boxes (x1, y1, x2, y2, ...)."""
    return float(box_iou(a, np.asarray(b, dtype=np.float64)[None])[0])


def pick_face(boxes: np.ndarray, previous: np.ndarray | None, min_iou: float = 0.3) -> np.ndarray | None:
    """One face out of ``boxes [K, 5]``: the one continuing the track (highest IoU with
    ``previous`` when above ``min_iou``), else the largest. None when ``boxes`` is empty."""
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return None
    boxes = boxes.reshape(-1, boxes.shape[-1])
    if previous is not None and len(boxes) > 1:
        iou = box_iou(np.asarray(previous)[:4], boxes)
        best = int(np.argmax(iou))
        if iou[best] > min_iou:
            return boxes[best].copy()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[int(np.argmax(areas))].copy()
