"""What a video file holds: `probe_video` and the stream facts the readers share.

Rotation convention: `VideoInfo.rotation` is the clockwise angle a player
turns the stored picture to show it (0, 90, 180 or 270). A phone clip shot
in portrait usually reads 90. FFmpeg's display-matrix angle (PyAV's
`VideoFrame.rotation`) is the same turn expressed counter-clockwise, i.e.
its negative.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from .decode import MediaError, decode_or_damaged, open_input, stream_duration


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learns about a file's first video stream."""

    path: str
    width: int  # display width, after rotation
    height: int  # display height, after rotation
    fps: float  # average frame rate, never truncated
    frame_count: int
    frame_count_exact: bool  # False: estimated from duration * fps
    duration_s: float
    rotation: int  # clockwise degrees a player turns the stored picture
    time_base: Fraction
    codec: str
    coded_width: int  # stored size, before rotation
    coded_height: int


def video_stream_of(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    """The first real video stream (cover art in audio files does not count)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError(f"{path} has no video stream (expected a video file)")


def rate_of(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def clockwise(ccw_degrees: float) -> int:
    """FFmpeg's counter-clockwise display angle -> clockwise multiple of 90."""
    return int(-round(ccw_degrees / 90.0)) % 4 * 90


def upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    """The decoded picture as a player shows it: RGB, turned by its display matrix."""
    rotation_cw = clockwise(frame.rotation)
    image = frame.to_ndarray(format="rgb24")
    if rotation_cw:
        # np.rot90 turns counter-clockwise for positive k.
        image = np.rot90(image, k=-(rotation_cw // 90))
    return np.ascontiguousarray(image)


def decoded_frames(container, stream, path: str) -> Iterator[av.VideoFrame]:
    """Decoded frames of `stream`, skipping packets the decoder rejects (their frames are
    missing; callers number frames by pts, so no later frame moves)."""
    return (f for f in decode_or_damaged(container, stream, path) if not isinstance(f, av.Packet))


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Describe the first video stream of `path`; decodes one frame for rotation."""
    path = os.fspath(path)
    container = open_input(path, "video")
    try:
        stream = video_stream_of(container, path)
        tb = Fraction(stream.time_base) if stream.time_base else Fraction(1, av.time_base)
        duration = stream_duration(container, stream) or 0.0
        rate = rate_of(stream)
        if rate is None:
            if stream.frames and duration > 0:
                rate = Fraction(stream.frames / duration).limit_denominator(1001)
            else:
                raise MediaError(f"{path}: cannot determine the video frame rate")
        if stream.frames > 0:
            frame_count, exact = int(stream.frames), True
        else:
            frame_count, exact = int(round(duration * float(rate))), False

        first = next(decoded_frames(container, stream, path), None)
        if first is None:
            raise MediaError(f"{path}: the video stream holds no decodable frame")
        rotation = clockwise(first.rotation)
        coded_w, coded_h = first.width, first.height
        codec = stream.codec_context.name
        if duration == 0.0:
            duration = frame_count / float(rate)
    finally:
        container.close()

    width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        fps=float(rate),
        frame_count=frame_count,
        frame_count_exact=exact,
        duration_s=duration,
        rotation=rotation,
        time_base=tb,
        codec=codec,
        coded_width=coded_w,
        coded_height=coded_h,
    )
