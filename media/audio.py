"""Streaming audio decoding with PyAV: any container/codec FFmpeg reads.

Audio is decoded frame by frame, resampled with `av.AudioResampler` and
handed out as float32 arrays, so memory stays flat however long the file.

Mono downmix: "mean" averages the channels like `librosa.load(mono=True)`
(MuseTalk's loader); "ffmpeg" lets swresample mix to mono like
`ffmpeg -ac 1` (whisper's `load_audio`, used by LatentSync). They differ by
a gain (about 3 dB for correlated stereo) and agree for mono sources.

Damaged data: a packet the decoder rejects becomes silence of that packet's duration (what
the decoder gives for a damaged packet it accepts is kept as it is), so the audio after it
stays where it belongs and the track keeps its length. `on_damage(time_s, seconds)` hears of
each silenced packet.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import av
import numpy as np

from .decode import MediaError, StreamReader, decode_or_damaged, open_input, stream_duration

DamageCallback = Callable[[float | None, float], None]


@dataclass(frozen=True)
class AudioInfo:
    """What `probe_audio` learns about a file's first audio stream."""

    path: str
    duration_s: float
    sample_rate: int
    channels: int
    codec: str


@contextmanager
def _audio_input(path: str):
    """(container, its first audio stream) of `path`, closed after the block."""
    container = open_input(path, "audio")
    try:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio stream (expected an audio file or a video with sound)")
        yield container, container.streams.audio[0]
    finally:
        container.close()


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Describe the first audio stream of `path` (an audio file or a video)."""
    path = os.fspath(path)
    with _audio_input(path) as (container, stream):
        return AudioInfo(
            path=path,
            duration_s=stream_duration(container, stream) or 0.0,
            sample_rate=int(stream.codec_context.sample_rate or stream.rate or 0),
            channels=int(stream.codec_context.channels or 0),
            codec=stream.codec_context.name,
        )


def _packet_samples(packet: av.Packet, stream, rate: int, like: av.AudioFrame | None) -> int:
    """Samples (at `rate`) a packet would have decoded to, from its duration: the part
    before time 0 (encoder priming, which decoders drop) left out."""
    if packet.duration and packet.time_base:
        ticks = packet.duration
        if packet.pts is not None:
            ticks = max(packet.pts + packet.duration, 0) - max(packet.pts, 0)
        return round(ticks * packet.time_base * rate)
    if stream.codec_context.frame_size:
        return int(stream.codec_context.frame_size)
    return like.samples if like is not None else 0


def _silence(like: av.AudioFrame, samples: int) -> av.AudioFrame:
    """`samples` of silence in the sample format, layout and rate of a decoded frame (so
    the resampler takes it as one more frame of the stream)."""
    fmt = like.format
    channels = len(like.layout.channels)
    dtype = np.dtype(av.audio.frame.format_dtypes[fmt.name])
    shape = (channels, samples) if fmt.is_planar else (1, samples * channels)
    fill = 128 if dtype == np.uint8 else 0      # unsigned 8-bit silence is mid-scale
    frame = av.AudioFrame.from_ndarray(np.full(shape, fill, dtype), format=fmt.name,
                                       layout=like.layout.name)
    frame.sample_rate = like.sample_rate
    return frame


def _decoded_audio(container, stream, path: str,
                   on_damage: DamageCallback | None = None) -> Iterator[av.AudioFrame]:
    """Decoded frames of `stream`; a packet the decoder rejects comes out as silence of its
    duration, so every later sample keeps its place."""
    rate = stream.codec_context.sample_rate or stream.rate or 0
    owed, like = 0, None
    for frame in decode_or_damaged(container, stream, f"audio in {path}"):
        if isinstance(frame, av.Packet):            # damaged: silence of its duration, later
            src_rate = like.sample_rate if like is not None else rate
            n = _packet_samples(frame, stream, src_rate, like) if src_rate else 0
            if n > 0:
                owed += n
                if on_damage is not None:
                    at = (float(frame.pts * frame.time_base)
                          if frame.pts is not None and frame.time_base else None)
                    on_damage(at, n / src_rate)
            continue
        if owed:
            yield _silence(frame, owed)
            owed = 0
        like = frame
        yield frame
    if owed and like is not None:
        yield _silence(like, owed)       # the track ended on damaged packets


def iter_audio_blocks(
    path: str | os.PathLike,
    sample_rate: int,
    channels: int = 1,
    downmix: str = "mean",
    on_damage: DamageCallback | None = None,
) -> Iterator[np.ndarray]:
    """Yield float32 blocks [channels, n] of the whole audio track, resampled.

    `channels` is 1 (downmixed as `downmix` says) or 2 (swresample's stereo mix). Codec end padding
    (e.g. the tail of the last AAC frame) is cut back to the container's duration when the overshoot
    is less than one decoded frame; a larger mismatch means the duration is a guess, and nothing is
    cut. A packet that cannot be decoded gives silence of its duration (see the module's docstring).
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    if downmix not in ("mean", "ffmpeg"):
        raise ValueError(f"downmix must be 'mean' or 'ffmpeg', got {downmix!r}")
    path = os.fspath(path)
    with _audio_input(path) as (container, stream):
        duration = stream_duration(container, stream)
        limit = round(duration * sample_rate) if duration else None
        if channels == 2:
            layout = "stereo"
        else:
            layout = None if downmix == "mean" else "mono"  # None: keep the source's channels
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)

        def resampled() -> Iterator[np.ndarray]:
            try:
                for frame in _decoded_audio(container, stream, path, on_damage):
                    frame.pts = None  # timing is by sample count; avoids resampler pts checks
                    for out in resampler.resample(frame):
                        yield out.to_ndarray()
                for out in resampler.resample(None):  # drain the resampler's delay line
                    yield out.to_ndarray()
            except av.error.FFmpegError as exc:
                raise MediaError(f"error decoding audio in {path}: {exc}") from exc

        # Hold back about two decoded frames so the end can still be trimmed to `limit`.
        emitted, held, held_n, largest = 0, [], 0, 0
        for block in resampled():
            if channels == 1 and block.shape[0] > 1:
                block = block.mean(axis=0, keepdims=True)
            block = np.ascontiguousarray(block, dtype=np.float32)
            largest = max(largest, block.shape[1])
            held.append(block)
            held_n += block.shape[1]
            while held_n - held[0].shape[1] >= 2 * largest:
                first = held.pop(0)
                held_n -= first.shape[1]
                emitted += first.shape[1]
                yield first
        if not held:
            return
        tail = np.concatenate(held, axis=1)
        total = emitted + held_n
        if limit is not None and limit < total <= limit + largest + 64:
            tail = tail[:, : max(0, limit - emitted)]
        if tail.shape[1]:
            yield tail


class Samples:
    """Exactly `n` samples [channels, n] at a time from a stream of blocks (fewer at the end);
    `lead` samples of silence come first."""

    def __init__(self, blocks: Iterator[np.ndarray], channels: int, lead: int = 0):
        self.blocks = blocks
        self.held = [np.zeros((channels, lead), np.float32)]
        self.count = lead       # samples held

    def take(self, n: int) -> np.ndarray:
        while self.count < n and (block := next(self.blocks, None)) is not None:
            self.held.append(block)
            self.count += block.shape[1]
        joined = np.concatenate(self.held, axis=1) if len(self.held) > 1 else self.held[0]
        self.held, self.count = [joined[:, n:]], max(self.count - n, 0)
        return joined[:, :n]


class AudioReader(StreamReader):
    """Iterate float32 mono chunks of `chunk_seconds` at `sample_rate` (last one shorter).
    `on_damage(time_s, seconds)` is called for each packet that could not be decoded (given
    as silence)."""

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int = 16000,
        chunk_seconds: float = 1.0,
        downmix: str = "mean",
        on_damage: DamageCallback | None = None,
    ):
        self.path = os.fspath(path)
        self.info = probe_audio(self.path)
        self.sample_rate = int(sample_rate)
        self.chunk_samples = max(1, int(round(chunk_seconds * self.sample_rate)))
        self.samples_read = 0
        self._blocks = iter_audio_blocks(self.path, self.sample_rate, 1, downmix, on_damage)

    def __next__(self) -> np.ndarray:
        chunk = super().__next__()
        self.samples_read += chunk.size
        return chunk

    def _generate(self) -> Iterator[np.ndarray]:
        samples = Samples(self._blocks, 1)
        while (chunk := samples.take(self.chunk_samples)).shape[1]:
            yield chunk[0].copy()

    def _release(self) -> None:
        self._blocks.close()


def read_audio(path: str | os.PathLike, sr: int = 16000, downmix: str = "mean") -> np.ndarray:
    """The whole audio track as float32 mono at `sr` Hz."""
    with AudioReader(path, sample_rate=sr, chunk_seconds=60.0, downmix=downmix) as reader:
        return np.concatenate([np.zeros(0, np.float32), *reader])
