"""Opening media files and decoding their packets with PyAV, damaged data included; the base
of the streaming readers.

Damaged data: a read error does not end a stream (the demuxer resyncs on the next packet it
can parse), and a packet the decoder rejects is handed to the caller in place of its frames,
so each reader decides what stands in for it (video: the previous picture; audio: silence).
"""

from __future__ import annotations

import os
from typing import Iterator

import av


class MediaError(ValueError):
    """A media file cannot be read or lacks what was expected of it."""


class MediaFileNotFoundError(MediaError, FileNotFoundError):
    """A media file does not exist."""


def stream_duration(container: av.container.InputContainer, stream) -> float | None:
    """Seconds `stream` lasts, from its own header or else the container's; None if unknown."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def open_input(path: str | os.PathLike, what: str = "media") -> av.container.InputContainer:
    """Open `path` for reading, turning FFmpeg failures into `MediaError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaFileNotFoundError(f"{what} file not found: {path}")
    try:
        return av.open(path, mode="r")
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot open {path} as {what}: {exc}") from exc


# Read errors in a row after which the rest of a file counts as unreadable.
_READ_RETRIES = 64


def _damage(exc: BaseException) -> bool:
    """Whether an FFmpeg error means damaged input (skip it) rather than a failing machine."""
    return not isinstance(exc, (av.error.MemoryError, av.error.ExitError))


def packets(container, stream) -> Iterator[av.Packet]:
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
    for packet in packets(container, stream):
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


class StreamReader:
    """An iterator over what `_generate()` yields, started at the first `next()`, that
    `close()` (or leaving a `with` block) ends; subclasses release their file in `_release()`."""

    _items: Iterator | None = None
    _closed = False

    def __iter__(self):
        return self

    def __next__(self):
        if self._items is None:
            if self._closed:
                raise StopIteration
            self._items = self._generate()
        return next(self._items)

    def close(self) -> None:
        if self._items is not None:
            self._items.close()
        self._closed = True
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
