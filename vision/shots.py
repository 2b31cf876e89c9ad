"""Shot changes: a cheap comparison of consecutive frames' grey thumbnails.

A cut changes most of the picture at once; motion inside a shot changes little of a
32 x 18 thumbnail. The threshold is the mean absolute grey-level change (0-255).
"""
from __future__ import annotations

import cv2
import numpy as np

SHOT_CHANGE = 24.0


def thumbnail(frame: np.ndarray) -> np.ndarray:
    step = max(1, min(frame.shape[:2]) // 64)       # subsample first: cheap at 4K too
    small = np.ascontiguousarray(frame[::step, ::step])
    return cv2.cvtColor(cv2.resize(small, (32, 18), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_RGB2GRAY).astype(np.int16)


class ShotCuts:
    """Feed frames in order; `is_cut(frame)` says whether a new shot starts at it."""

    def __init__(self, threshold: float = SHOT_CHANGE):
        self.threshold = threshold
        self.previous = None

    def is_cut(self, frame: np.ndarray) -> bool:
        thumb = thumbnail(frame)
        prev, self.previous = self.previous, thumb
        return prev is not None and float(np.abs(thumb - prev).mean()) > self.threshold
