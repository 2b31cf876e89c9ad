"""Face detection with OpenCV's bundled frontal-face Haar cascade (no downloads needed).

A fallback for when the S3FD weights are absent: less accurate (frontal faces only, more
misses on turned heads, occasional false positives on round textures), but it ships inside
``opencv-python(-headless)`` < 5.
"""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from .face_detection import check_frame, network_size

CASCADE_FILENAME = "haarcascade_frontalface_default.xml"
CASCADE_WINDOW = 24  # training window of the cascade, px


def default_cascade_path() -> str:
    """Path of ``haarcascade_frontalface_default.xml`` inside the installed OpenCV."""
    root = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not root:
        raise FileNotFoundError(
            f"this OpenCV build ({cv2.__version__}) ships no Haar cascades "
            f"(cv2.data.haarcascades is missing); need {CASCADE_FILENAME} from opencv-python < 5"
        )
    return os.path.join(root, CASCADE_FILENAME)


def _last_stage_threshold(path: str) -> float:
    storage = cv2.FileStorage(path, cv2.FILE_STORAGE_READ)
    try:
        stages = storage.getNode("cascade").getNode("stages")
        if stages.empty() or stages.size() == 0:
            raise ValueError(f"{path}: no cascade stages found (expected an OpenCV cascade XML)")
        return float(stages.at(stages.size() - 1).getNode("stageThreshold").real())
    finally:
        storage.release()


class HaarFaceDetector:
    """Haar-cascade detector with the same ``detect(frames)`` API as ``S3FDDetector``.

    Score: a window is accepted when the boosted sum of the cascade's last stage reaches that
    stage's threshold; OpenCV reports that sum (``levelWeights``, the best of each grouped
    cluster). The score is ``sigmoid(sum - threshold)``, the boosting margin read as log-odds,
    so every accepted face scores in [0.5, 1), like S3FD faces above its 0.5 cut, and a larger
    margin means a more certain face. It is not calibrated against S3FD scores.

    Box: the cascade's square box runs from the forehead to just under the mouth. S3FD boxes
    (and MuseTalk's crop) reach the chin. On skimage's astronaut the Haar box is
    (177, 66)-(272, 161), h = 95, with the chin at y ~ 176, 16% of h below it; the sides and top
    already match the face. So the bottom is extended by ``chin_extend * h`` (default 0.15).
    Estimated by eye against the image, not measured against S3FD (no weights here).
    """

    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size_frac: float = 0.08, max_side: int | None = 640,
                 chin_extend: float = 0.15, cascade_path: str | None = None) -> None:
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        if max_side is not None and max_side < CASCADE_WINDOW:
            raise ValueError(f"max_side must be >= {CASCADE_WINDOW}, got {max_side}")
        self.cascade_path = cascade_path or default_cascade_path()
        if not os.path.isfile(self.cascade_path):
            raise FileNotFoundError(f"Haar cascade not found: {self.cascade_path}")
        self.cascade = cv2.CascadeClassifier(self.cascade_path)
        if self.cascade.empty():
            raise ValueError(f"{self.cascade_path}: OpenCV could not load it as a cascade classifier")
        self.stage_threshold = _last_stage_threshold(self.cascade_path)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size_frac = float(min_size_frac)
        self.max_side = max_side
        self.chin_extend = float(chin_extend)

    def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Faces per frame: float32 ``[K, 5]`` (x1, y1, x2, y2, score) in the frame's own
        pixels, best score first; ``[0, 5]`` when none."""
        return [self._detect_one(frame, i) for i, frame in enumerate(frames)]

    def _detect_one(self, frame: np.ndarray, index: int) -> np.ndarray:
        check_frame(frame, index)
        height, width = frame.shape[:2]
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        net_h, net_w = network_size(height, width, self.max_side)
        if (net_h, net_w) != (height, width):
            gray = cv2.resize(gray, (net_w, net_h), interpolation=cv2.INTER_AREA)
        min_side = max(CASCADE_WINDOW, int(round(self.min_size_frac * min(gray.shape))))
        if min(gray.shape) < min_side:
            return np.zeros((0, 5), dtype=np.float32)
        rects, _, weights = self.cascade.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side), outputRejectLevels=True,
        )
        if len(rects) == 0:
            return np.zeros((0, 5), dtype=np.float32)
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        margin = np.asarray(weights, dtype=np.float64).reshape(-1) - self.stage_threshold
        scores = 1.0 / (1.0 + np.exp(-np.clip(margin, -50.0, 50.0)))
        sx, sy = width / gray.shape[1], height / gray.shape[0]
        x, y, w, h = rects.T
        boxes = np.stack([np.clip(x * sx, 0, width), np.clip(y * sy, 0, height),
                          np.clip((x + w) * sx, 0, width),
                          np.clip((y + h * (1.0 + self.chin_extend)) * sy, 0, height), scores], axis=1)
        return boxes[np.argsort(-scores, kind="stable")].astype(np.float32)
