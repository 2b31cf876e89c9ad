"""Synthetic inputs for tests and benchmarks of whole lip-sync graphs: random-initialised
models (tiny, or full size for timing) saved in the real checkpoint formats, and clips made
of a real face photograph (scikit-image's astronaut) with cutaway runs.

Every frame carries its source index in a strip of 8x8 cells in its top-left corner (far
from the face), so a check can tell which input frame each output frame came from.
Random weights produce meaningless mouths: these inputs exercise the pipeline, its timing
and its bookkeeping, never the lip-sync quality.
"""
from __future__ import annotations

import functools
import os

import cv2
import numpy as np

from lipgraph.models.random_weights import tiny_weights  # noqa: F401  (tests import it from here)

ID_BITS = 10
CELL = 8


def model_sets(paths: dict, device: str = "cpu", latentsync: dict | None = None,
               steps: int = 2) -> list[str]:
    """--set lines pointing the model stages of the built-in graph (musetalk; with
    `latentsync` paths, surgical with `steps` DDIM steps) at the tiny models, on `device`.
    The stages are found by the params they declare and the graph's shortcuts."""
    import yaml

    import lipgraph.stages  # noqa: F401  (the pipeline's stage types register themselves)
    from lipgraph.graph.builtin import find_graph_file
    from lipgraph.graph.registry import resolve
    from lipgraph.models.random_weights import weight_sets
    with open(find_graph_file("surgical" if latentsync else "musetalk"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    sets = weight_sets({name: resolve(s["type"]) for name, s in doc["stages"].items()},
                       {**paths, **(latentsync or {})})

    def shortcut(name: str, value) -> list[str]:
        targets = doc["args"].get(name) or []
        return [f"{t}={value}" for t in ([targets] if isinstance(targets, str) else targets)]
    if latentsync:
        sets += shortcut("steps", steps)
    return sets + shortcut("device", device)


# ----- frames -----------------------------------------------------------------------------
def stamp_id(frame: np.ndarray, index: int) -> np.ndarray:
    for bit in range(ID_BITS):
        on = (index >> bit) & 1
        frame[0:CELL, bit * CELL:(bit + 1) * CELL] = 235 if on else 20
    return frame


def read_id(frame: np.ndarray) -> int:
    value = 0
    for bit in range(ID_BITS):
        if frame[0:CELL, bit * CELL:(bit + 1) * CELL].mean() > 127:
            value |= 1 << bit
    return value


@functools.lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photographs, read once (read-only)."""
    from skimage import data
    image = getattr(data, name)()
    image.setflags(write=False)
    return image


def face_frame(i: int, width: int = 320, height: int = 240, side: int = 200) -> np.ndarray:
    """The astronaut's face on a plain background, drifting sideways and scaling (between
    0.86 and 1 of `side`) from frame to frame."""
    side = int(round(side * (0.93 + 0.07 * np.cos(i / 4.0))))
    face = cv2.resize(photo("astronaut"), (side, side), interpolation=cv2.INTER_AREA)
    frame = np.full((height, width, 3), 60, np.uint8)
    dx = int(round(6 * np.sin(i / 5.0)))
    x0, y0 = (width - side) // 2 + dx, (height - side) // 2 + 10
    frame[y0:y0 + side, x0:x0 + side] = face
    return stamp_id(frame, i)


def cutaway_frame(i: int, width: int = 320, height: int = 240) -> np.ndarray:
    pic = photo("coffee" if (i // 7) % 2 == 0 else "rocket")
    return stamp_id(cv2.resize(pic, (width, height), interpolation=cv2.INTER_AREA), i)


def clip_frames(pattern: str, width: int = 320, height: int = 240) -> list[np.ndarray]:
    """'F' face frame, 'C' cutaway frame, one letter per frame: e.g. 'FFFFCCCFFF'."""
    return [face_frame(i, width, height) if c == "F" else cutaway_frame(i, width, height)
            for i, c in enumerate(pattern)]


def write_wav(path: str, signal, sr: int = 16000) -> None:
    """A 16-bit mono wav of `signal`: an array, or an iterable of arrays (written chunk by
    chunk, so a long track never sits in memory whole)."""
    import av
    chunks = [signal] if isinstance(signal, np.ndarray) else signal
    with av.open(path, mode="w") as c:
        stream = c.add_stream("pcm_s16le", rate=sr, layout="mono")
        for chunk in chunks:
            pcm = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)


def speech_at(t: np.ndarray) -> np.ndarray:
    """Syllable-like bursts of a voiced tone at times `t` (s), so frames differ in their audio."""
    env = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t)) ** 2 / 4
    return (env * np.sin(2 * np.pi * (180 + 60 * np.sin(2 * np.pi * 0.7 * t)) * t)).astype(np.float32)


def speech_like(seconds: float, sr: int = 16000) -> np.ndarray:
    return speech_at(np.arange(int(round(seconds * sr))) / sr)


def make_clip(folder: str, pattern: str, fps: float = 25.0, audio_s: float | None = None,
              name: str = "clip", width: int = 320, height: int = 240, crf: int = 12,
              side: int = 200) -> tuple[str, str]:
    """Write the video (H.264, high quality; faces `side` px) and a speech-like wav; return
    their paths."""
    from lipgraph.media.writer import VideoWriter
    video = os.path.join(folder, f"{name}.mp4")
    # 4:2:0 needs even sizes; keep odd test sizes odd with 4:4:4
    pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    with VideoWriter(video, width, height, fps, crf=crf, preset="veryfast", pix_fmt=pix_fmt) as w:
        for i, c in enumerate(pattern):
            w.write(face_frame(i, width, height, side) if c == "F" else cutaway_frame(i, width, height))
    seconds = len(pattern) / fps if audio_s is None else audio_s
    audio = os.path.join(folder, f"{name}.wav")
    write_wav(audio, speech_like(seconds))
    return video, audio


def clip_pattern(frames: int, face_run: int = 40, cutaway_run: int = 10) -> str:
    """Face runs separated by cutaway runs, `frames` letters long."""
    unit = "F" * face_run + "C" * cutaway_run
    return (unit * (frames // len(unit) + 1))[:frames]


def face_closeup(i: int, width: int = 160, height: int = 120) -> np.ndarray:
    """The astronaut's head filling most of a small frame (a face Haar finds at 160x120)."""
    head = photo("astronaut")[10:250, 110:350]           # 240 x 240 around the face
    side = min(height, width) - 8
    face = cv2.resize(head, (side, side), interpolation=cv2.INTER_AREA)
    frame = np.full((height, width, 3), 60, np.uint8)
    dx = int(round(3 * np.sin(i / 7.0)))
    x0 = (width - side) // 2 + dx
    frame[4:4 + side, x0:x0 + side] = face
    return stamp_id(frame, i % (1 << ID_BITS))


def make_long_clip(folder: str, minutes: float, fps: float = 25.0, width: int = 160,
                   height: int = 120, face_run: int = 50, period: int = 500,
                   name: str = "long") -> tuple[str, str]:
    """A long clip written frame by frame and an audio track written in chunks (memory flat)."""
    from lipgraph.media.writer import VideoWriter
    n = int(round(minutes * 60 * fps))
    video = os.path.join(folder, f"{name}.mp4")
    cut_a, cut_b = (cv2.resize(photo(p), (width, height), interpolation=cv2.INTER_AREA)
                    for p in ("coffee", "rocket"))
    with VideoWriter(video, width, height, fps, crf=20, preset="ultrafast") as w:
        for i in range(n):
            if i % period < face_run:
                w.write(face_closeup(i, width, height))
            else:
                w.write(stamp_id((cut_a if (i // period) % 2 else cut_b).copy(), i % (1 << ID_BITS)))
    audio = os.path.join(folder, f"{name}.wav")
    sr, total = 16000, int(n / fps * 16000)
    step = 10 * sr
    write_wav(audio, (speech_at(np.arange(a, min(a + step, total)) / sr) for a in range(0, total, step)))
    return video, audio


def graph_command(graph: str, video: str, audio: str, output: str, sets=(), *extra: str) -> list[str]:
    """The run_graph.py command line for a lip-sync graph file and its inputs."""
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(root, "run_graph.py"), graph, "--video", video,
           "--audio", audio, "--output", output, *extra]
    for s in sets:
        cmd += ["--set", s]
    return cmd
