"""Frame-accurate access to a video stream: the packet table (frame count, timestamps,
keyframes; read once per file version and process) and decoding from any frame on.

Frames are numbered by their presentation timestamps against the packet table, so a frame
that cannot be decoded leaves a hole at its own index, and the hole is filled with the
previous decoded frame (the next decoded one before the first), marked `undecodable`: every
later frame keeps its index and time, and the output never shifts against the audio. A frame
that decodes with damage (concealed by the decoder) is given as decoded.
"""

from __future__ import annotations

import bisect
import os
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av

from .decode import MediaError, open_input, packets
from .identity import settled_stamp
from .probe import decoded_frames, rate_of, video_stream_of


def set_threads(stream: av.video.stream.VideoStream, threads: str | int | None) -> None:
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


# Keyframes tried, each one earlier, when frames right after a seek do not decode.
_SEEK_TRIES = 3


@dataclass
class FrameTable:
    """Presentation timestamps of every frame, from one demux pass (no decoding)."""

    count: int
    pts: list[int] | None  # sorted; None when some packet carries no pts
    keyframes: list[int]  # frame indices of keyframes (only when pts is known)


@dataclass
class DecodedFrame:
    """A frame of `FrameSource.frames_from`: its index and own pts, and the picture shown (for
    a frame that could not be decoded, a neighbouring decoded frame's)."""

    index: int
    frame: av.VideoFrame
    pts: int | None
    undecodable: bool = False


_TABLES: dict = {}          # table_key -> FrameTable
_TABLES_KEPT = 8


def table_key(path: str, stream_index: int):
    """The file version's key, or None for a file changed in the last 2 s (`settled_stamp`)."""
    try:
        stamp = settled_stamp(path)
    except OSError:
        return None
    return None if stamp is None else (*stamp, stream_index)


class FrameSource:
    """One open video file with frame-accurate (re)positioning."""

    def __init__(self, path: str, threads: str | int | None):
        self.path = path
        self.threads = threads
        self.container: av.container.InputContainer | None = None
        self.stream: av.video.stream.VideoStream | None = None
        self._fresh = False
        self._table: FrameTable | None = None
        self._open()
        self.time_base = Fraction(self.stream.time_base)
        rate = rate_of(self.stream)
        self.rate = rate if rate is not None else Fraction(25)
        self.first_pts: int | None = None

    def _open(self) -> None:
        self.close()
        self.container = open_input(self.path, "video")
        self.stream = video_stream_of(self.container, self.path)
        set_threads(self.stream, self.threads)
        self._fresh = True

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
            self.stream = None

    def table(self) -> FrameTable:
        """Demux every packet once to learn frame count, pts and keyframes (once per file
        version and process: planning, probing and every reader share it)."""
        if self._table is None:
            key = table_key(self.path, self.stream.index)
            self._table = _TABLES.get(key) or self._demux_table()
            if key is not None and key not in _TABLES:
                while len(_TABLES) >= _TABLES_KEPT:
                    _TABLES.pop(next(iter(_TABLES)))
                _TABLES[key] = self._table
            self.first_pts = self._table.pts[0] if self._table.pts else None
        return self._table

    def _demux_table(self) -> FrameTable:
        entries: list[tuple[int, bool]] = []
        count, pts_known = 0, True
        for packet in packets(self.container, self.stream):
            if packet.size == 0 or packet.is_discard:
                continue
            count += 1
            if packet.pts is None:
                pts_known = False
            elif pts_known:
                entries.append((packet.pts, packet.is_keyframe))
        self._open()  # demuxing moved the read position; start afresh
        if not pts_known:
            return FrameTable(count, None, [])
        entries.sort()
        return FrameTable(count, [p for p, _ in entries], [i for i, (_, k) in enumerate(entries) if k])

    def time_of(self, index: int, pts: int | None) -> float:
        if pts is None or self.first_pts is None:
            return float(index / self.rate)
        return float((pts - self.first_pts) * self.time_base)

    def _decode(self) -> Iterator[av.VideoFrame]:
        return decoded_frames(self.container, self.stream, self.path)

    def _index_of(self, pts: int | None) -> int | None:
        table = self._table.pts if self._table is not None else None
        if table is None or pts is None:
            return None
        pos = bisect.bisect_left(table, pts)
        return pos if pos < len(table) and table[pos] == pts else None

    def _pts_at(self, index: int) -> int | None:
        table = self._table.pts if self._table is not None else None
        return table[index] if table is not None and index < len(table) else None

    def frames_from(self, start: int) -> Iterator[DecodedFrame]:
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

    def _number(self, frames, first, first_index: int, start: int, top: bool) -> Iterator[DecodedFrame]:
        pts_table = self._table.pts if self._table is not None else None
        # highest index given so far, and its frame
        last, prev = (-1 if top else first_index - 1), None
        index, frame = first_index, first
        while True:
            if index > last:
                # frames between the last one and this one did not decode: the previous
                # decoded frame stands in (before the first, the first)
                for k in range(max(last + 1, start), index):
                    yield DecodedFrame(k, frame if prev is None else prev, self._pts_at(k), True)
                if index >= start:
                    yield DecodedFrame(index, frame, frame.pts, False)
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
                yield DecodedFrame(k, prev, self._pts_at(k), True)


def keyframe_indices(path: str | os.PathLike) -> list[int]:
    """Indices of the keyframes of the first video stream (demuxed, not decoded); empty
    when the container gives no timestamps."""
    with closing(FrameSource(os.fspath(path), None)) as src:
        return list(src.table().keyframes)
