"""A video played forward, backward, forward ... for as many frames as the audio needs
(MuseTalk's and LatentSync's loop), decoded in bounded chunks."""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import numpy as np

from .decode import MediaError, StreamReader
from .frame_source import DecodedFrame, FrameSource, FrameTable
from .probe import upright_rgb


@dataclass
class PingPongFrame:
    """One frame of a ping-pong sequence: output position plus its source."""

    index: int  # output index
    source_index: int
    time: float  # output time in seconds, strictly increasing
    source_time: float
    image: np.ndarray
    undecodable: bool = False  # the source frame could not be decoded: `image` is a stand-in


def frame_times(src: FrameSource, table: FrameTable) -> list[Fraction]:
    """Exact times of the source frames from the first (from pts; index / rate where the
    container gives no timestamps), then the end of the last frame (its time + 1 / rate)."""
    rate = src.rate
    if table.pts is None or len(table.pts) != table.count:
        return [Fraction(i) / rate for i in range(table.count + 1)]
    p0, tb = table.pts[0], src.time_base
    return [(p - p0) * tb for p in table.pts] + [(table.pts[-1] - p0) * tb + 1 / rate]


def pingpong_indices(n_src: int, n_out: int) -> Iterator[int]:
    """Source frame for each output frame when the video must run n_out frames.

    Matches MuseTalk (`frames + frames[::-1]` cycled) and LatentSync
    (`loop_video`: forward, reversed, forward ... then cut): 0..n-1, n-1..0,
    0..n-1, ... so each turning frame is shown twice in a row. With
    n_out <= n_src this is just 0..n_out-1.
    """
    if n_src <= 0:
        raise ValueError(f"pingpong needs at least one source frame, got {n_src}")
    period = 2 * n_src
    for i in range(n_out):
        k = i % period
        yield k if k < n_src else period - 1 - k


class PingPongReader(StreamReader):
    """Frames of a video played forward, backward, forward ... for n_out frames.

    Memory stays bounded: backward passes decode `chunk` frames at a time
    (seek to the chunk's keyframe, decode forward, emit reversed), never the
    whole video. Output times grow by each source frame's own duration (from
    pts; the last frame lasts 1/fps), so VFR pacing survives.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_out: int,
        chunk: int = 32,
        threads: str | int | None = "AUTO",
        start: int = 0,
    ):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.path = os.fspath(path)
        self.n_out = int(n_out)
        self.chunk = int(chunk)
        self.start = max(0, int(start))   # first output index (resuming a run)
        self._src = FrameSource(self.path, threads)
        table = self._src.table()
        self.n_src = table.count
        if self.n_src == 0:
            raise MediaError(f"{self.path}: the video stream holds no frames")
        self._times = frame_times(self._src, table)
        self.max_chunk_held = 0  # largest number of frames held at once (for checks)

    def _picture(self, d: DecodedFrame) -> tuple[int, np.ndarray, float, bool]:
        return d.index, upright_rgb(d.frame), self._src.time_of(d.index, d.pts), d.undecodable

    def _forward(self, stop: int, first: int = 0) -> Iterator[tuple[int, np.ndarray, float, bool]]:
        """Source frames first, first+1 ..., at most `stop` of them: (index, image, source
        time, undecodable)."""
        for d in self._src.frames_from(first):
            if d.index >= first + stop:
                break
            yield self._picture(d)

    def _chunk_start(self, end: int) -> int:
        """Start of the backward chunk ending before `end`: a keyframe if one fits."""
        lowest = max(0, end - self.chunk)
        keys = self._src.table().keyframes
        pos = bisect.bisect_left(keys, lowest)
        if pos < len(keys) and keys[pos] < end:
            return keys[pos]  # starts on a keyframe: no frame decoded twice
        return lowest

    def _backward(self, stop: int,
                  first: int | None = None) -> Iterator[tuple[int, np.ndarray, float, bool]]:
        """Source frames first (default n_src-1) down to 0, at most `stop` of them."""
        end, emitted = (self.n_src if first is None else first + 1), 0
        while end > 0 and emitted < stop:
            begin = self._chunk_start(end)
            held: list[tuple[int, np.ndarray, float, bool]] = []
            for d in self._src.frames_from(begin):
                if d.index >= end:
                    break
                if d.index >= begin:
                    held.append(self._picture(d))
            if len(held) != end - begin or held[0][0] != begin:
                raise MediaError(
                    f"{self.path}: frames {begin}..{end - 1} could not all be decoded "
                    f"(got {len(held)}); the file may be damaged"
                )
            self.max_chunk_held = max(self.max_chunk_held, len(held))
            while held and emitted < stop:
                yield held.pop()
                emitted += 1
            end = begin

    def _generate(self) -> Iterator[PingPongFrame]:
        # output times before `start` are summed from the frame durations, nothing decoded
        out_index = self.start
        t = self._times
        out_time = sum((t[k + 1] - t[k] for k in pingpong_indices(self.n_src, self.start)), Fraction(0))
        passes, offset = divmod(self.start, self.n_src)
        while out_index < self.n_out:
            left = self.n_out - out_index
            source = (self._forward(left, offset) if passes % 2 == 0
                      else self._backward(left, self.n_src - 1 - offset))
            offset = 0
            for src_index, image, src_time, undecodable in source:
                yield PingPongFrame(out_index, src_index, float(out_time), src_time, image, undecodable)
                out_time += t[src_index + 1] - t[src_index]
                out_index += 1
            passes += 1

    def _release(self) -> None:
        self._src.close()
