"""Streaming video decoding with PyAV.

Frames are decoded one at a time (threaded decoding inside FFmpeg), turned
upright according to the stream's display matrix (see `probe`) and handed out as RGB
arrays; nothing holds the whole video. Timing comes from presentation
timestamps, so variable-frame-rate sources keep their real timing; a frame that
cannot be decoded keeps its place (see `frame_source`).
"""

from __future__ import annotations

import bisect
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import numpy as np

from .decode import StreamReader
from .frame_source import FrameSource
from .probe import upright_rgb


@dataclass
class VideoFrame:
    """One decoded frame. `index` counts from the first frame of the file."""

    index: int
    time: float  # seconds since the file's first frame
    image: np.ndarray  # HxWx3 uint8 RGB, upright, C-contiguous
    pts: int | None = None
    undecodable: bool = False  # the frame could not be decoded: `image` is a stand-in


class VideoReader(StreamReader):
    """Iterate `VideoFrame`s of a video file, one decoded frame at a time.

    `start_index` / `start_time` resume mid-file: the reader seeks to the
    keyframe at or before, decodes forward and drops earlier frames; indices
    and times still count from the file's first frame.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: str | int | None = "AUTO",
        start_time: float = 0.0,
        start_index: int = 0,
    ):
        self.path = os.fspath(path)
        self._src = FrameSource(self.path, threads)
        start = max(0, int(start_index))
        if start > 0 or start_time > 0:
            table = self._src.table()
            if start_time > 0:
                if table.pts:
                    # first frame whose time >= start_time, half a tick of tolerance
                    ticks = self._src.first_pts + Fraction(float(start_time)) / self._src.time_base
                    from_time = bisect.bisect_left(table.pts, math.ceil(ticks - Fraction(1, 2)))
                else:
                    from_time = math.ceil(start_time * float(self._src.rate) - 1e-6)
                start = max(start, from_time)
        self.start_index = start

    def seek(self, index: int) -> None:
        """Go on from frame `index` (a keyframe seek; the file's frame table, read once,
        is kept, so walking backward does not re-read the file each time)."""
        if self._items is not None:
            self._items.close()
            self._items = None
        self.start_index = max(0, int(index))

    def _generate(self) -> Iterator[VideoFrame]:
        for d in self._src.frames_from(self.start_index):
            yield VideoFrame(
                index=d.index,
                time=self._src.time_of(d.index, d.pts),
                image=upright_rgb(d.frame),
                pts=d.pts,
                undecodable=d.undecodable,
            )

    def _release(self) -> None:
        self._src.close()
