"""Streaming video decoding with PyAV.

Frames are decoded one at a time (threaded decoding inside FFmpeg), turned
upright according to the stream's display matrix and handed out as RGB
arrays; nothing holds the whole video. Timing comes from presentation
timestamps, so variable-frame-rate sources keep their real timing.

Damaged data: a packet the decoder rejects does not stop decoding. Frames are numbered
by their presentation timestamps against the file's packet table, so a frame that cannot
be decoded leaves a hole at its own index, and the hole is filled with the previous
decoded frame (the next decoded one before the first), marked `undecodable`: every later
frame keeps its index and time, and the output never shifts against the audio. A frame
that decodes with damage (concealed by the decoder) is given as decoded.

Rotation convention: `VideoInfo.rotation` is the clockwise angle a player
turns the stored picture to show it (0, 90, 180 or 270). A phone clip shot
in portrait usually reads 90. FFmpeg's display-matrix angle (PyAV's
`VideoFrame.rotation`) is the same turn expressed counter-clockwise, i.e.
its negative.
"""

from __future__ import annotations

import bisect
import math
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np


class MediaError(ValueError):
    """A media file cannot be read or lacks what was expected of it."""


class MediaFileNotFoundError(MediaError, FileNotFoundError):
    """A media file does not exist."""


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


@dataclass
class VideoFrame:
    """One decoded frame. `index` counts from the first frame of the file."""

    index: int
    time: float  # seconds since the file's first frame
    image: np.ndarray  # HxWx3 uint8 RGB, upright, C-contiguous
    pts: int | None = None
    undecodable: bool = False  # the frame could not be decoded: `image` is a stand-in


@dataclass
class PingPongFrame:
    """One frame of a ping-pong sequence: output position plus its source."""

    index: int  # output index
    source_index: int
    time: float  # output time in seconds, strictly increasing
    source_time: float
    image: np.ndarray
    undecodable: bool = False  # the source frame could not be decoded: `image` is a stand-in


def open_input(path: str | os.PathLike, what: str = "media") -> av.container.InputContainer:
    """Open `path` for reading, turning FFmpeg failures into `MediaError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaFileNotFoundError(f"{what} file not found: {path}")
    try:
        return av.open(path, mode="r")
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot open {path} as {what}: {exc}") from exc


def video_stream_of(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    """The first real video stream (cover art in audio files does not count)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError(f"{path} has no video stream (expected a video file)")


def _rate_of(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def _clockwise(ccw_degrees: float) -> int:
    """FFmpeg's counter-clockwise display angle -> clockwise multiple of 90."""
    return int(-round(ccw_degrees / 90.0)) % 4 * 90


def _upright_rgb(frame: av.VideoFrame, rotation_cw: int) -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")
    if rotation_cw:
        # np.rot90 turns counter-clockwise for positive k.
        image = np.rot90(image, k=-(rotation_cw // 90))
    return np.ascontiguousarray(image)


def _set_threads(stream: av.video.stream.VideoStream, threads: str | int | None) -> None:
    if threads is None or threads == "NONE":
        return
    if av.logging.get_level() is not None and threads != "SLICE":
        # with PyAV's log callback on, a frame thread logging a damaged packet waits for
        # the GIL while the caller holds it waiting for that thread: a deadlock
        threads = "SLICE"
    if isinstance(threads, str) and threads.isdigit():     # "2" from a graph file or --set
        threads = int(threads)
    if isinstance(threads, int):
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
    else:
        stream.thread_type = threads


# Read errors in a row after which the rest of a file counts as unreadable.
_READ_RETRIES = 64
# Keyframes tried, each one earlier, when frames right after a seek do not decode.
_SEEK_TRIES = 3


def _damage(exc: BaseException) -> bool:
    """Whether an FFmpeg error means damaged input (skip it) rather than a failing machine."""
    return not isinstance(exc, (av.error.MemoryError, av.error.ExitError))


def _packets(container, stream) -> Iterator[av.Packet]:
    """The packets of `stream`, then its flush packet. A read error in damaged data does not
    end the stream: the demuxer resyncs on the next packet it can parse, so reading goes on
    from where it stands; after _READ_RETRIES errors in a row the rest is taken as unreadable
    (as with a truncated file) and the flush packet is left out."""
    failures = 0
    demux = container.demux(stream)
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            if not _damage(exc):
                raise
            if failures >= _READ_RETRIES:
                return
            failures += 1
            demux = container.demux(stream)
            continue
        failures = 0
        yield packet


def decode_or_damaged(container, stream, what: str):
    """Decoded frames of `stream`; in place of each packet the decoder rejects as damaged,
    that packet (the caller decides what stands in for it); other decoding errors raise
    naming `what` (e.g. "audio in FILE")."""
    flushed = False
    for packet in _packets(container, stream):
        flushed = packet.size == 0
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            if not _damage(exc):
                raise MediaError(f"error decoding {what}: {exc}") from exc
            yield packet
            continue
        yield from frames
    if not flushed:
        try:
            yield from stream.codec_context.decode(None)
        except av.error.FFmpegError:
            pass


def _decoded(container, stream, path: str) -> Iterator[av.VideoFrame]:
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
        if stream.duration:
            duration = float(stream.duration * tb)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        rate = _rate_of(stream)
        if rate is None:
            if stream.frames and duration > 0:
                rate = Fraction(stream.frames / duration).limit_denominator(1001)
            else:
                raise MediaError(f"{path}: cannot determine the video frame rate")
        if stream.frames > 0:
            frame_count, exact = int(stream.frames), True
        else:
            frame_count, exact = int(round(duration * float(rate))), False

        first = next(_decoded(container, stream, path), None)
        if first is None:
            raise MediaError(f"{path}: the video stream holds no decodable frame")
        rotation = _clockwise(first.rotation)
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


@dataclass
class _FrameTable:
    """Presentation timestamps of every frame, from one demux pass (no decoding)."""

    count: int
    pts: list[int] | None  # sorted; None when some packet carries no pts
    keyframes: list[int]  # frame indices of keyframes (only when pts is known)


@dataclass
class _Decoded:
    """A frame of `_Source.frames_from`: its index and own pts, and the picture shown (for
    a frame that could not be decoded, a neighbouring decoded frame's)."""

    index: int
    frame: av.VideoFrame
    pts: int | None
    undecodable: bool = False


_TABLES: dict = {}          # (path, size, mtime_ns, inode, stream) -> _FrameTable
_TABLES_KEPT = 8


def _table_key(path: str, stream_index: int):
    """The file version's key, or None for a file changed in the last 2 s (a same-size
    rewrite within the clock's resolution would look unchanged; git's racy rule)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if time.time() - st.st_mtime < 2.0:
        return None
    return os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, stream_index


class _Source:
    """One open video file with frame-accurate (re)positioning."""

    def __init__(self, path: str, threads: str | int | None):
        self.path = path
        self.threads = threads
        self.container: av.container.InputContainer | None = None
        self.stream: av.video.stream.VideoStream | None = None
        self._fresh = False
        self._table: _FrameTable | None = None
        self._open()
        self.time_base = Fraction(self.stream.time_base)
        rate = _rate_of(self.stream)
        self.rate = rate if rate is not None else Fraction(25)
        self.first_pts: int | None = None

    def _open(self) -> None:
        self.close()
        self.container = open_input(self.path, "video")
        self.stream = video_stream_of(self.container, self.path)
        _set_threads(self.stream, self.threads)
        self._fresh = True

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
            self.stream = None

    def table(self) -> _FrameTable:
        """Demux every packet once to learn frame count, pts and keyframes (once per file
        version and process: planning, probing and every reader share it)."""
        if self._table is None:
            key = _table_key(self.path, self.stream.index)
            if key is not None and key in _TABLES:
                self._table = _TABLES[key]
                self.first_pts = self._table.pts[0] if self._table.pts else None
                return self._table
            entries: list[tuple[int, bool]] = []
            count, pts_known = 0, True
            for packet in _packets(self.container, self.stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                count += 1
                if packet.pts is None:
                    pts_known = False
                elif pts_known:
                    entries.append((packet.pts, packet.is_keyframe))
            self._open()  # demuxing moved the read position; start afresh
            if pts_known:
                entries.sort()
                pts = [p for p, _ in entries]
                keys = [i for i, (_, k) in enumerate(entries) if k]
                self._table = _FrameTable(count, pts, keys)
                if pts:
                    self.first_pts = pts[0]
            else:
                self._table = _FrameTable(count, None, [])
            if key is not None:
                while len(_TABLES) >= _TABLES_KEPT:
                    _TABLES.pop(next(iter(_TABLES)))
                _TABLES[key] = self._table
        return self._table

    def time_of(self, index: int, pts: int | None) -> float:
        if pts is None or self.first_pts is None:
            return float(index / self.rate)
        return float((pts - self.first_pts) * self.time_base)

    def _decode(self) -> Iterator[av.VideoFrame]:
        return _decoded(self.container, self.stream, self.path)

    def _index_of(self, pts: int | None) -> int | None:
        table = self._table.pts if self._table is not None else None
        if table is None or pts is None:
            return None
        pos = bisect.bisect_left(table, pts)
        return pos if pos < len(table) and table[pos] == pts else None

    def _pts_at(self, index: int) -> int | None:
        table = self._table.pts if self._table is not None else None
        return table[index] if table is not None and index < len(table) else None

    def frames_from(self, start: int) -> Iterator[_Decoded]:
        """Every frame with index >= start, in order, each index once: frames that could
        not be decoded are there too, as stand-ins (`undecodable`), when the packet table
        has timestamps to place them by."""
        self.table()    # numbering by pts is what keeps frames in place around damage
        frames, first, first_index, top = self._position(start)
        if first is None:
            return
        yield from self._number(frames, first, first_index, start, top)

    def _position(self, start: int):
        """Place the decoder at or before frame `start`: (frames, first frame, its index,
        whether decoding began at the top of the file)."""
        table = self._table
        target = start
        tries = _SEEK_TRIES if start > 0 and table is not None and table.pts is not None \
            and start < len(table.pts) else 0
        for _ in range(tries):
            try:
                self.container.seek(table.pts[target], stream=self.stream, backward=True,
                                    any_frame=False)
                self._fresh = False
                frames = self._decode()
                first = next(frames, None)
            except (av.error.FFmpegError, MediaError):
                break  # some demuxers cannot seek: decode from the top instead
            pos = self._index_of(first.pts) if first is not None else None
            if pos is not None and pos <= start:
                return frames, first, pos, False
            frames.close()
            # the first frames after that keyframe did not decode: start a keyframe earlier,
            # where the previous decoded frame is found (from the top after a few)
            k = bisect.bisect_right(table.keyframes, target) - 1
            if k <= 0:
                break
            target = table.keyframes[k - 1]
        if not self._fresh:
            self._open()
        self._fresh = False
        frames = self._decode()
        first = next(frames, None)
        if first is not None and self.first_pts is None:
            self.first_pts = first.pts
        pos = self._index_of(first.pts) if first is not None else None
        return frames, first, 0 if pos is None else pos, True

    def _number(self, frames, first, first_index: int, start: int, top: bool) -> Iterator[_Decoded]:
        pts_table = self._table.pts if self._table is not None else None
        # highest index given so far, and its frame
        last, prev = (-1 if top else first_index - 1), None
        index, frame = first_index, first
        while True:
            if index > last:
                # frames between the last one and this one did not decode: the previous
                # decoded frame stands in (before the first, the first)
                for k in range(max(last + 1, start), index):
                    yield _Decoded(k, frame if prev is None else prev, self._pts_at(k), True)
                if index >= start:
                    yield _Decoded(index, frame, frame.pts, False)
                last, prev = index, frame
            # else: a damaged stream gave a frame late; its place is filled already
            frame = next(frames, None)
            if frame is None:
                break
            # numbering by pts stays right when the decoder drops a frame
            pos = self._index_of(frame.pts)
            index = last + 1 if pos is None else pos
        if pts_table is not None:
            # packets at the end that did not decode (a truncated file's table ends with the
            # last packet read, so these are damaged, not missing)
            for k in range(max(last + 1, start), len(pts_table)):
                yield _Decoded(k, prev, self._pts_at(k), True)


def keyframe_indices(path: str | os.PathLike) -> list[int]:
    """Indices of the keyframes of the first video stream (demuxed, not decoded); empty
    when the container gives no timestamps."""
    src = _Source(os.fspath(path), None)
    try:
        return list(src.table().keyframes)
    finally:
        src.close()


class VideoReader:
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
        self._src = _Source(self.path, threads)
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
        self._frames: Iterator[VideoFrame] | None = None

    def __iter__(self) -> "VideoReader":
        return self

    def __next__(self) -> VideoFrame:
        if self._frames is None:
            if self._src.container is None:
                raise StopIteration
            self._frames = self._generate()
        return next(self._frames)

    def seek(self, index: int) -> None:
        """Go on from frame `index` (a keyframe seek; the file's frame table, read once,
        is kept, so walking backward does not re-read the file each time)."""
        if self._frames is not None:
            self._frames.close()
            self._frames = None
        self.start_index = max(0, int(index))

    def _generate(self) -> Iterator[VideoFrame]:
        for d in self._src.frames_from(self.start_index):
            yield VideoFrame(
                index=d.index,
                time=self._src.time_of(d.index, d.pts),
                image=_upright_rgb(d.frame, _clockwise(d.frame.rotation)),
                pts=d.pts,
                undecodable=d.undecodable,
            )

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
        self._src.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


class PingPongReader:
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
        self._src = _Source(self.path, threads)
        table = self._src.table()
        self.n_src = table.count
        if self.n_src == 0:
            raise MediaError(f"{self.path}: the video stream holds no frames")
        self._durations = self._frame_durations(table)
        self.max_chunk_held = 0  # largest number of frames held at once (for checks)
        self._frames: Iterator[PingPongFrame] | None = None

    def _frame_durations(self, table: _FrameTable) -> list[Fraction]:
        last = 1 / self._src.rate
        if table.pts is None or len(table.pts) != table.count:
            return [last] * table.count
        tb = self._src.time_base
        steps = [(b - a) * tb for a, b in zip(table.pts, table.pts[1:])]
        return steps + [last]

    def __iter__(self) -> "PingPongReader":
        return self

    def __next__(self) -> PingPongFrame:
        if self._frames is None:
            if self._src.container is None:
                raise StopIteration
            self._frames = self._generate()
        return next(self._frames)

    def _source_time(self, index: int, pts: int | None) -> float:
        return self._src.time_of(index, pts)

    def _picture(self, d: _Decoded) -> tuple[int, np.ndarray, float, bool]:
        image = _upright_rgb(d.frame, _clockwise(d.frame.rotation))
        return d.index, image, self._source_time(d.index, d.pts), d.undecodable

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
        out_time = sum((self._durations[k] for k in pingpong_indices(self.n_src, self.start)),
                       Fraction(0))
        passes, offset = divmod(self.start, self.n_src)
        while out_index < self.n_out:
            left = self.n_out - out_index
            source = (self._forward(left, offset) if passes % 2 == 0
                      else self._backward(left, self.n_src - 1 - offset))
            offset = 0
            for src_index, image, src_time, undecodable in source:
                yield PingPongFrame(
                    index=out_index,
                    source_index=src_index,
                    time=float(out_time),
                    source_time=src_time,
                    image=image,
                    undecodable=undecodable,
                )
                out_time += self._durations[src_index]
                out_index += 1
            passes += 1

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
        self._src.close()

    def __enter__(self) -> "PingPongReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----- constant-rate resampling -----------------------------------------------------------
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


def _source_times(src: _Source, table: _FrameTable) -> tuple[Iterator[Fraction], Fraction]:
    """Exact times of the source frames, one at a time (from pts; index / rate where the
    container gives no timestamps), and the end of the last frame (its time plus 1 / average
    rate, as PingPongReader times it)."""
    rate = src.rate
    if table.pts is None or len(table.pts) != table.count:
        return (Fraction(i) / rate for i in range(table.count)), table.count / rate
    p0, tb = table.pts[0], src.time_base
    return ((p - p0) * tb for p in table.pts), (table.pts[-1] - p0) * tb + 1 / rate


def resampled_frames(path: str | os.PathLike, fps: Fraction | int) -> np.ndarray:
    """`resample_picks` of a file for the output frames covering its whole duration (one
    demux pass, nothing decoded)."""
    src = _Source(os.fspath(path), None)
    try:
        table = src.table()
        if table.count == 0:
            raise MediaError(f"{path}: the video stream holds no frames")
        times, end = _source_times(src, table)
        return resample_picks(times, fps, covering_count(end, fps))
    finally:
        src.close()


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
        times, end = _source_times(self._src, self._src.table())
        self.picks = resample_picks(times, self.fps, covering_count(end, self.fps))

    def _frame_durations(self, table: _FrameTable) -> list[Fraction]:
        return []               # output times are k / fps: no per-frame durations to keep

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
