"""H.264 (+ AAC) video writing with PyAV, committed atomically.

Frames go to a hidden temporary file beside the target (`.NAME.<pid>xXXXX.partial`) that is renamed
onto the target only when `close()` succeeds, so a crash or an abort never leaves a truncated video
at the final path.

Odd sizes: libx264 cannot encode 4:2:0 / 4:2:2 pictures of odd width or height, so such frames are
padded by repeating their last column / row; the output is then 1 px wider / taller than the frames
given (`out_width`, `out_height`). No pixel is dropped.

A writer that is garbage-collected without `close()` is aborted: its temporary file is removed and
nothing appears at the target.

A full disk (or quota, or file size limit) while writing is reported by `output_errors` as a
`DiskFullError` naming the output the user asked for, not the temporary file the error came from.
"""

from __future__ import annotations

import errno
import math
import os
from contextlib import contextmanager
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from .audio import Samples, iter_audio_blocks, probe_audio
from .partial import partial_path

# Output container by file extension.
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# AAC output keeps these source rates; anything else is resampled to 48 kHz.
_AAC_RATES = (44100, 48000)
_AUDIO_BLOCK = 4096
_SMPTE170M = 6  # AVCOL_SPC_SMPTE170M: the BT.601 matrix
_MPEG_RANGE = 1  # AVCOL_RANGE_MPEG: limited (16-235) range


class DiskFullError(OSError):
    """An output could not be written for lack of space; the message names the output."""

    def __init__(self, message: str, code: int, output: str):
        super().__init__(code, message, output)
        self.message = message

    def __str__(self) -> str:
        return self.message


_NO_SPACE = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the filesystem (or a file size limit) allows",
}


@contextmanager
def output_errors(output: str | os.PathLike):
    """Turn a lack of space met while writing `output` (its temporary files, segments or anything
    beside it) into a `DiskFullError` that names `output` and says why."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        why = _NO_SPACE.get(exc.errno)
        if why is None:
            raise
        where = f" (writing {exc.filename})" if exc.filename else ""
        path = os.path.abspath(os.fspath(output))
        # from None: the FFmpeg traceback under this adds nothing for a full disk
        raise DiskFullError(f"cannot write {path}: {why} [{os.strerror(exc.errno)}]{where}",
                            exc.errno, path) from None


def container_format(path: str) -> str:
    """The output container for `path`'s extension; ValueError naming `path` for others."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise ValueError(f"{path}: unsupported extension {ext!r}, expected one of {sorted(_FORMATS)}")
    return _FORMATS[ext]


def open_output(path: str, fmt: str, metadata: dict | None):
    """An output container at `path` with `metadata` in its tags."""
    container = av.open(path, mode="w", format=fmt)
    container.metadata.update(metadata or {})
    return container


def _as_rate(fps: float | Fraction) -> Fraction:
    """fps as an exact fraction: 29.97 -> 2997/100, 30000/1001 stays as it is."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def _time_base(rate: Fraction) -> Fraction:
    """A tick fine enough for VFR times, in which every frame step is whole."""
    den = math.lcm(90000, rate.numerator)
    return Fraction(1, den if den <= 10_000_000 else 90000)


def _chroma_subsampled(pix_fmt: str) -> tuple[bool, bool]:
    fmt = av.VideoFormat(pix_fmt, 4, 4)
    return fmt.chroma_width() < 4, fmt.chroma_height() < 4


class VideoWriter:
    """Encode RGB frames to an H.264 file, optionally muxing an AAC audio track.

    `write(image, time)` takes frames in order; `time` (seconds) sets the presentation time so
    variable frame rates survive, else frame k lands at k / fps. With `audio_path`, the audio (any
    format `media.audio` reads) is re-encoded as AAC starting `audio_offset` seconds into that file
    (a negative offset leads with silence), and cut or padded with silence to the video's duration,
    or to `duration_s` when given. `metadata` goes into the container's tags (e.g. a comment).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: float | Fraction,
        crf: int = 18,
        preset: str = "medium",
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        audio_path: str | os.PathLike | None = None,
        audio_offset: float = 0.0,
        duration_s: float | None = None,
        metadata: dict | None = None,
    ):
        self.path = os.path.abspath(os.fspath(path))
        if width <= 0 or height <= 0:
            raise ValueError(f"{self.path}: frame size must be positive, got {width}x{height}")
        fmt = container_format(self.path)
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"output folder does not exist: {folder}")
        self.width, self.height = int(width), int(height)
        pad_w, pad_h = _chroma_subsampled(pix_fmt)
        self.out_width = self.width + (self.width % 2 if pad_w else 0)
        self.out_height = self.height + (self.height % 2 if pad_h else 0)
        self.rate = _as_rate(fps)
        self.fps = float(self.rate)
        self.time_base = _time_base(self.rate)
        self.duration_limit = duration_s
        self.frames_written = 0
        self.temp_path = partial_path(self.path)     # .NAME.<pid>x<hex>.partial, see media/partial.py
        self._last_pts: int | None = None
        self._frame_ticks = self.rate.denominator / (self.rate.numerator * self.time_base)
        self._done = False
        self._audio: AudioTrack | None = None

        audio_info = probe_audio(audio_path) if audio_path is not None else None
        self._container = open_output(self.temp_path, fmt, metadata)
        try:
            options = {"crf": str(crf), "preset": preset} if codec in ("libx264", "libx265") else {}
            video = self._container.add_stream(codec, rate=self.rate, options=options)
            video.width, video.height = self.out_width, self.out_height
            video.pix_fmt = pix_fmt
            if not av.VideoFormat(pix_fmt).is_rgb:
                # PyAV converts RGB with the BT.601 matrix into limited range; say so,
                # or players guess BT.709 for HD sizes and shift the colours
                video.codec_context.colorspace = _SMPTE170M
                video.codec_context.color_range = _MPEG_RANGE
            video.time_base = self.time_base
            video.codec_context.time_base = self.time_base
            self._video = video
            if audio_info is not None:
                self._audio = AudioTrack(self._container, os.fspath(audio_path), audio_info,
                                         audio_offset)
        except BaseException:
            self.abort()
            raise

    @property
    def duration(self) -> float:
        """Seconds of video written so far: last frame's time plus one frame."""
        if self._last_pts is None:
            return 0.0
        return float((self._last_pts + self._frame_ticks) * self.time_base)

    def write(self, image_rgb: np.ndarray, time: float | None = None) -> None:
        """Append one HxWx3 uint8 RGB frame shown from `time` seconds on."""
        if self._done:
            raise ValueError(f"{self.path}: write() after close() or abort()")
        image = np.asarray(image_rgb)
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: expected a {self.height}x{self.width}x3 uint8 RGB frame, "
                f"got {image.shape} {image.dtype}"
            )
        if time is None:
            pts = round(self.frames_written * self._frame_ticks)
        else:
            pts = round(Fraction(float(time)) / self.time_base)
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(
                f"{self.path}: frame times must increase; frame {self.frames_written} at "
                f"{float(pts * self.time_base):.6f}s after {float(self._last_pts * self.time_base):.6f}s"
            )
        pad_h, pad_w = self.out_height - self.height, self.out_width - self.width
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = pts
        frame.time_base = self.time_base
        self._container.mux(self._video.encode(frame))
        self._last_pts = pts
        self.frames_written += 1
        if self._audio is not None:
            # keep the audio abreast of the video so the file is interleaved
            until = float(pts * self.time_base)
            if self.duration_limit is not None:
                until = min(until, self.duration_limit)
            self._audio.encode_until(until)

    def close(self) -> None:
        """Finish both streams and move the file onto `path`. Idempotent."""
        if self._done:
            return
        try:
            if self.frames_written == 0:
                raise ValueError(f"{self.path}: no frames were written")
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._audio.finish(self.duration_limit if self.duration_limit is not None
                                   else self.duration)
            self._container.close()
            self._container = None
            if self._audio is not None:
                self._audio.close()
            os.replace(self.temp_path, self.path)
            self._done = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written; nothing is left at `path` or `temp_path`."""
        if self._done:
            return
        self._done = True
        try:
            if self._audio is not None:
                self._audio.close()
        finally:
            container, self._container = self._container, None
            try:
                if container is not None:
                    container.close()
            except Exception:
                pass  # the file is discarded anyway
            finally:
                if os.path.exists(self.temp_path):
                    os.remove(self.temp_path)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # an unclosed writer must not leave its temporary file behind
        if not getattr(self, "_done", True) and hasattr(self, "temp_path"):
            try:
                self.abort()
            except Exception:
                pass


class AudioTrack:
    """An AAC track encoded from an audio file into an open output container, as the video advances:
    cut or padded with silence to the video's end. `offset` > 0 skips that much of the source, < 0
    leads with silence."""

    def __init__(self, container, audio_path: str, info, offset: float = 0.0):
        rate = info.sample_rate if info.sample_rate in _AAC_RATES else 48000
        channels = 1 if info.channels == 1 else 2
        self.container = container
        self.stream = container.add_stream("aac", rate=rate, layout="mono" if channels == 1 else "stereo")
        self.stream.time_base = Fraction(1, rate)
        self.rate = rate
        self.channels = channels
        self.written = 0  # samples encoded so far
        self._blocks: Iterator[np.ndarray] | None = iter_audio_blocks(audio_path, rate, channels)
        self._source = Samples(self._blocks, channels, lead=max(0, round(-offset * rate)))
        self._skip = max(0, round(offset * rate))       # source samples still to drop

    def _next(self, want: int) -> np.ndarray:
        """`want` samples [channels, want] of source audio, silence once it ends."""
        while self._skip and (cut := self._source.take(min(self._skip, 1 << 16)).shape[1]):
            self._skip -= cut
        samples = self._source.take(want)
        short = want - samples.shape[1]
        return np.pad(samples, ((0, 0), (0, short))) if short else samples

    def encode_until(self, seconds: float) -> None:
        target = round(seconds * self.rate)
        layout = "mono" if self.channels == 1 else "stereo"
        while self.written < target:
            samples = self._next(min(_AUDIO_BLOCK, target - self.written))
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
            frame.sample_rate = self.rate
            frame.pts = self.written
            # the encoder's clock (1/rate): the stream's time base may be rewritten by the
            # muxer when the header is written (Matroska uses 1/1000)
            frame.time_base = Fraction(1, self.rate)
            self.container.mux(self.stream.encode(frame))
            self.written += samples.shape[1]

    def finish(self, seconds: float) -> None:
        self.encode_until(seconds)
        self.container.mux(self.stream.encode(None))

    def close(self) -> None:
        if self._blocks is not None:
            self._blocks.close()
            self._blocks = None
