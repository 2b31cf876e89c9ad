"""The A/B pass over the videos: the input and both outputs read once, frame by frame in
lockstep (memory stays flat), measured and written side by side (input | A | B, labelled)."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterator, Sequence

import cv2
import numpy as np

from .ab_metrics import OutputFigures
from .ab_runs import Run, read_sidecar

PANEL_MAX_HEIGHT = 540


class SourceFrames:
    """Input frames by index for requests that mostly step forward and sometimes repeat or walk
    backward (ping-pong): recent frames are cached; a backward miss re-decodes one chunk."""

    def __init__(self, path: str, cache: int = 16):
        self.path = path
        self.size = max(2, cache)
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.reader = None
        self.next = 0
        self.decoded = 0

    def _open(self, start: int) -> None:
        if self.reader is None:
            from lipgraph.media.video import VideoReader
            self.reader = VideoReader(self.path, start_index=start)
        else:
            self.reader.seek(start)
        self.next = start

    def get(self, index: int) -> np.ndarray:
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        if self.reader is None or index < self.next:
            self._open(0 if self.reader is None else max(0, index - self.size + 1))
        while self.next <= index:
            frame = next(self.reader, None)
            if frame is None:
                raise IndexError(f"{self.path}: no frame {index} (the video ends at frame {self.next - 1})")
            self.decoded += 1
            self.cache[frame.index] = frame.image
            self.cache.move_to_end(frame.index)
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
            self.next = frame.index + 1
        return self.cache[index]

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def _frames(path: str | None) -> Iterator:
    if not path or not os.path.isfile(path):
        return iter(())
    from lipgraph.media.video import VideoReader
    return iter(VideoReader(path))


def _panel_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, PANEL_MAX_HEIGHT / height)
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _panel(image: np.ndarray | None, size: tuple[int, int], label: str) -> np.ndarray:
    w, h = size
    if image is None:
        panel = np.full((h, w, 3), 32, np.uint8)
        label += " (no frame)"
    elif image.shape[1] != w or image.shape[0] != h:
        panel = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    else:
        panel = image.copy()
    scale = max(0.35, h / 720)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    # bottom-left: the top-left corner is where test clips stamp their frame numbers
    cv2.rectangle(panel, (0, h - th - base - 6), (min(w, tw + 8), h), (0, 0, 0), -1)
    cv2.putText(panel, label, (4, h - base - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return panel


def analyse(video: str, audio: str, runs: Sequence[Run], out_dir: str, lossless: bool,
            side_by_side: bool = True) -> tuple[dict, list[str]]:
    """Read the input and both outputs once in lockstep: per-graph figures, side_by_side.mp4.
    Returns (figures per label, reasons for what could not be computed)."""
    from lipgraph.media.probe import probe_video
    from lipgraph.media.writer import VideoWriter
    info = probe_video(video)
    n_input = info.frame_count
    missing: list[str] = []
    readers, sidecars, figures = _open_outputs(runs, lossless, missing)
    source = SourceFrames(video)
    writer = None
    panel = _panel_size(info.width, info.height)
    labels = {r.label: f"{r.label}: {r.name}" for r in runs}
    k, last_t = 0, -1.0
    try:
        while True:
            frames = {label: next(reader, None) for label, reader in readers.items()}
            if all(f is None for f in frames.values()):
                break
            src = _measure(k, frames, runs, sidecars, figures, source)
            if src is None:     # no sidecar: the pipeline's default extension (ping-pong)
                src = k % (2 * n_input) if n_input else k
                src = src if src < n_input else 2 * n_input - 1 - src
            if side_by_side:
                t = next((f.time for f in frames.values() if f is not None), None)
                t = t if t is not None and t > last_t else last_t + 1 / info.fps
                if writer is None:
                    writer = VideoWriter(os.path.join(out_dir, "side_by_side.mp4"),
                                         (1 + len(runs)) * panel[0], panel[1], info.fps, crf=20,
                                         preset="veryfast", audio_path=audio)
                try:
                    inp = source.get(src)
                except IndexError:
                    inp = None
                row = [_panel(inp, panel, "input")]
                row += [_panel(frames[r.label].image if frames[r.label] is not None else None, panel,
                               labels[r.label]) for r in runs]
                writer.write(np.concatenate(row, axis=1), t)
                last_t = t
            k += 1
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
        source.close()
        for reader in readers.values():
            close = getattr(reader, "close", None)
            if close:
                close()
    return _results(runs, figures, sidecars, n_input, missing), missing


def _open_outputs(runs: Sequence[Run], lossless: bool, missing: list[str]) -> tuple[dict, dict, dict]:
    """Frame readers of the outputs, their sidecars and their figures to fill, by label."""
    readers, sidecars, figures = {}, {}, {}
    for run in runs:
        ok = run.exit_code in (0, None) and os.path.isfile(run.output)
        readers[run.label] = _frames(run.output if ok else None)
        if not ok:
            why = run.error or "the run failed"
            missing.append(f"{run.label} ({run.name}): no output to measure ({why})")
            continue
        side = read_sidecar(run.sidecar) if run.sidecar else None
        if side is None:
            why = ("its sink writes no per-frame sidecar" if run.sidecar is None
                   else f"sidecar {run.sidecar} was not written")
            missing.append(f"{run.label} ({run.name}): identity, temporal stability, cutaway integrity, "
                           f"frame order and LSE need face/edit boxes per frame: {why}")
        sidecars[run.label] = side
        figures[run.label] = OutputFigures(lossless)
    return readers, sidecars, figures


def _measure(k: int, frames: dict, runs: Sequence[Run], sidecars: dict, figures: dict,
             source: SourceFrames) -> int | None:
    """Add output frame `k` of each run to its figures; the source frame the first sidecar names."""
    src = None
    for run in runs:
        f, side = frames[run.label], sidecars.get(run.label)
        if f is None:
            continue
        fig = figures.get(run.label)
        if fig is not None:
            fig.frames += 1
        if side is not None and k < len(side) and fig is not None:
            s = int(side[k]["src"])
            try:
                inp = source.get(s)
            except IndexError:
                fig.srcs.append(s)      # counted as out of range below
                continue
            fig.add(k, f.image, f.time, side[k], inp)
            src = s if src is None else src
    return src


def _results(runs: Sequence[Run], figures: dict, sidecars: dict, n_input: int,
             missing: list[str]) -> dict:
    results = {}
    for run in runs:
        fig, side = figures.get(run.label), sidecars.get(run.label)
        if fig is None:
            continue
        if side is None:
            results[run.label] = {"frames": {"output_frames": fig.frames, "input_frames": n_input}}
            continue
        res = fig.result(n_input)
        res["frames"]["sidecar_lines"] = len(side)
        if len(side) != fig.frames:
            missing.append(f"{run.label} ({run.name}): the sidecar has {len(side)} lines for "
                           f"{fig.frames} output frames; frames past either end were not measured")
        results[run.label] = res
    return results
