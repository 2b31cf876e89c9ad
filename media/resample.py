"""Constant-rate resampling of a video's frames, as FFmpeg's `fps` filter picks them, and
the reader that plays the resampled sequence (looped like `PingPongReader`)."""

from __future__ import annotations

import os
from contextlib import closing
from fractions import Fraction
from typing import Iterator

import numpy as np

from .decode import MediaError
from .frame_source import FrameSource
from .pingpong import PingPongFrame, PingPongReader, frame_times


def fps_slot(t: Fraction | int, fps: Fraction | int) -> int:
    """The output frame (of a stream at `fps`) at which a frame with time `t` >= 0 starts:
    round(t * fps), halves rounded up, exactly as FFmpeg's `fps` filter rounds a frame's
    timestamp into its output time base with its default `round=near` (AV_ROUND_NEAR_INF)."""
    x = Fraction(t) * Fraction(fps)
    return (2 * x.numerator + x.denominator) // (2 * x.denominator)


def resample_picks(times, fps: Fraction | int, count: int) -> np.ndarray:
    """Source frame shown by each output frame k < `count` of a constant-rate stream at `fps`.

    `times`: exact (int or Fraction) presentation times of the source frames in decode order,
    non-decreasing, relative to the first frame (the first is 0). FFmpeg's `fps` filter
    rule: source frame i starts at output frame fps_slot(times[i]) and is shown until the
    next source frame starts; when several start at the same output frame only the last of
    them is shown (the others are dropped); a frame held over several output frames is
    repeated. Equivalently: output frame k shows the latest source frame with
    times[i] * fps < k + 1/2, i.e. the frame on screen just before the middle of output
    frame k's interval, (k + 1/2) / fps. Output frames after the last source frame's slot
    repeat the last frame.
    """
    picks = np.zeros(max(0, int(count)), np.int64)
    k, last = 0, 0
    for i, t in enumerate(times):
        slot = fps_slot(t, fps)
        while k < min(slot, len(picks)):
            picks[k] = last
            k += 1
        if slot >= len(picks):
            break               # times only grow: no later frame is shown
        last = i
    picks[k:] = last
    return picks


def covering_count(end: Fraction | int, fps: Fraction | int) -> int:
    """Output frames at `fps` covering a source that ends at `end` seconds (the end of its
    last frame): round(end * fps) as the `fps` filter rounds its end-of-stream time, at
    least 1."""
    return max(1, fps_slot(end, fps))


def resampled_frames(path: str | os.PathLike, fps: Fraction | int) -> np.ndarray:
    """`resample_picks` of a file for the output frames covering its whole duration (one
    demux pass, nothing decoded)."""
    with closing(FrameSource(os.fspath(path), None)) as src:
        table = src.table()
        if table.count == 0:
            raise MediaError(f"{path}: the video stream holds no frames")
        times = frame_times(src, table)
    return resample_picks(times[:-1], fps, covering_count(times[-1], fps))


class ResampledReader(PingPongReader):
    """Frames of a video at a constant `fps` (see `resample_picks`) for n_out output frames.

    The resampled sequence covers the source's duration (`covering_count` frames); when
    n_out is larger it plays forward, backward, forward ... like PingPongReader, over the
    resampled frames (as upstream resamples to 25 fps first, then loops). Output frame k
    has time k / fps; `source_index` names the decoded frame it shows. A frame shown again
    is a copy, so a stage editing one output frame in place never touches another.
    Backward passes decode `chunk` frames at a time, as PingPongReader does.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: Fraction | int,
        n_out: int,
        chunk: int = 32,
        threads: str | int | None = "AUTO",
        start: int = 0,
    ):
        super().__init__(path, n_out, chunk=chunk, threads=threads, start=start)
        self.fps = Fraction(fps)
        self.picks = resample_picks(self._times[:-1], self.fps, covering_count(self._times[-1], self.fps))

    def _generate(self) -> Iterator[PingPongFrame]:
        n = len(self.picks)
        out_index = self.start
        passes, offset = divmod(self.start, n)
        while out_index < self.n_out:
            left = self.n_out - out_index
            if passes % 2 == 0:
                slots = range(offset, min(n, offset + left))
                a, b = int(self.picks[slots[0]]), int(self.picks[slots[-1]])
                source = self._forward(b - a + 1, a)
            else:
                top = n - 1 - offset
                slots = range(top, max(-1, top - left), -1)
                a, b = int(self.picks[slots[0]]), int(self.picks[slots[-1]])
                source = self._backward(a - b + 1, a)
            step = 1 if passes % 2 == 0 else -1
            held, shown = None, False
            for slot in slots:
                want = int(self.picks[slot])
                # the source runs in the pass's direction; a frame the decoder skipped
                # (damaged file) gives way to the next one it has
                while held is None or (held[0] - want) * step < 0:
                    got = next(source, None)
                    if got is None:
                        return          # the file ended early: the caller warns
                    held, shown = got, False
                src_index, image, src_time, undecodable = held
                yield PingPongFrame(
                    index=out_index,
                    source_index=src_index,
                    time=float(Fraction(out_index) / self.fps),
                    source_time=src_time,
                    image=image.copy() if shown else image,
                    undecodable=undecodable,
                )
                shown = True
                out_index += 1
            source.close()
            offset = 0
            passes += 1
