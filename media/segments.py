"""Segmented output, so a long job can resume where it stopped.

Frames are encoded into video-only MP4 segments of a fixed number of frames (segment k holds
output frames [k*N, (k+1)*N)), each with its own encoder, so each starts on a keyframe and
closes cleanly. A segment is written to a temporary name and renamed when complete, then
recorded in the job's manifest (rewritten atomically). At the end the segments are joined by
copying packets (no re-encoding) and the audio is encoded once for the whole duration, into a
temporary file renamed onto the output.

The work folder `.NAME.lipgraph/` sits beside the output: `manifest.json` plus the segments
(and per-segment sidecar lines). It is removed once the output is complete.

With `encoders: N > 1` up to N consecutive segments are encoded at once, each by its own
thread: the caller only hands frames over, and the conversion to the encoder's pixel format
and the encoding (both outside the GIL in FFmpeg) run side by side, so one sink is no longer
capped by one thread's per-frame work. Each segment is encoded as it would be alone (the
same frames and timestamps; with a deterministic codec such as FFV1 the same bytes: libx264's
own threads already vary its bits from run to run), and segments are recorded in order.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from fractions import Fraction

import av

from .audio import probe_audio
from .partial import written_aside
from .writer import AudioTrack, VideoWriter, container_format, open_output

MANIFEST = "manifest.json"
VERSION = 1


def work_dir(output: str) -> str:
    folder, name = os.path.split(os.path.abspath(output))
    return os.path.join(folder, f".{name}.lipgraph")


def segment_frames(segment_s: float, fps: float) -> int:
    return max(1, int(round(segment_s * fps)))


class Manifest:
    """The job record: identity of inputs and graph, and the segments completed so far."""

    def __init__(self, folder: str, data: dict):
        self.folder = folder
        self.data = data

    @classmethod
    def create(cls, folder: str, job: dict, start: int = 0) -> "Manifest":
        """A new job record; `start`: its first output frame (a part of a split job)."""
        os.makedirs(folder, exist_ok=True)
        m = cls(folder, {"version": VERSION, **job, "start": start, "segments": []})
        m.save()
        return m

    @classmethod
    def combined(cls, parts: list["Manifest"]) -> "Manifest":
        """One record over the parts of a split job, in order (for joining them)."""
        segs = []
        for part in parts:
            for seg in part.segments:
                seg = dict(seg)
                for key in ("file", "sidecar"):
                    if seg.get(key):
                        seg[key] = os.path.relpath(os.path.join(part.folder, seg[key]), parts[0].folder)
                if segs and seg["first"] != segs[-1]["last"] + 1:
                    raise ValueError(f"parts do not follow each other: frame {seg['first']} after "
                                     f"{segs[-1]['last']}")
                segs.append(seg)
        return cls(parts[0].folder, {"version": VERSION, "segments": segs})

    @classmethod
    def load(cls, folder: str) -> "Manifest | None":
        path = os.path.join(folder, MANIFEST)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("version") != VERSION:
            raise ValueError(f"{path}: manifest version {data.get('version')} (expected {VERSION})")
        return cls(folder, data)

    @property
    def segments(self) -> list[dict]:
        return self.data["segments"]

    def next_frame(self) -> int:
        """First output frame not yet in a completed segment."""
        return self.segments[-1]["last"] + 1 if self.segments else self.data.get("start", 0)

    def add(self, record: dict) -> None:
        if record["first"] != self.next_frame():
            raise ValueError(f"segment starting at frame {record['first']} does not follow "
                             f"frame {self.next_frame() - 1}")
        self.segments.append(record)
        self.save()

    def save(self) -> None:
        # written aside: on a full disk the previous manifest stays in force
        with (written_aside(os.path.join(self.folder, MANIFEST)) as tmp,
              open(tmp, "w", encoding="utf-8") as f):
            json.dump(self.data, f, indent=1)

    def check_files(self) -> list[str]:
        """Problems with the recorded segments (missing or truncated files)."""
        problems = []
        for seg in self.segments:
            path = os.path.join(self.folder, seg["file"])
            if not os.path.exists(path):
                problems.append(f"{seg['file']} is missing")
            elif os.path.getsize(path) != seg["bytes"]:
                problems.append(f"{seg['file']} has {os.path.getsize(path)} bytes, expected {seg['bytes']}")
        return problems

    def remove_strays(self) -> None:
        """Delete files of segments that never completed."""
        keep = {MANIFEST} | {s["file"] for s in self.segments} | \
               {s["sidecar"] for s in self.segments if s.get("sidecar")}
        for name in os.listdir(self.folder):
            if name not in keep:
                path = os.path.join(self.folder, name)
                if os.path.isfile(path):
                    os.unlink(path)


class _Threaded:
    """A segment's writer fed from a short queue by a thread of its own; it is written,
    closed and aborted as the writer is."""

    def __init__(self, writer: VideoWriter):
        self.writer = writer
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.thread = threading.Thread(target=self._run, name="segment-encoder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (job := self.queue.get()) is not None:
                self.writer.write(*job)
            self.writer.close()
        except BaseException as exc:         # reported by the caller's next call
            self.error = exc
            self.writer.abort()
            while self.queue.get() is not None:
                pass

    def write(self, image, t: float) -> None:
        while True:
            self._raise()
            try:
                self.queue.put((image, t), timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def abort(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self.writer.abort()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


class SegmentWriter:
    """Writes frames into the manifest's segments, N frames each, from `start` on; with
    `encoders` > 1, that many segments are encoded at once (module docstring)."""

    def __init__(self, manifest: Manifest, width: int, height: int, fps: float,
                 per_segment: int, on_temp=None, encoders: int = 1, **encoder):
        self.m = manifest
        self.width, self.height, self.fps = width, height, fps
        self.n = per_segment
        self.encoders = max(1, int(encoders))
        self.encoder = encoder
        self.on_temp = on_temp or (lambda path: None)
        self.current: dict | None = None
        self.encoding: VideoWriter | _Threaded | None = None
        self.sidecar = None
        self.pending: list[tuple[dict, VideoWriter | _Threaded]] = []    # closed segments still encoding

    def write(self, index: int, image, time: float, sidecar_line: str | None = None) -> None:
        k = index // self.n
        if self.current is not None and k != self.current["k"]:
            self._close_segment()
        if self.encoding is None:
            if index % self.n and index != self.m.next_frame():
                raise ValueError(f"frame {index} cannot start a segment")
            while len(self.pending) >= self.encoders:       # at most N segments at once
                self._record(*self.pending.pop(0))
            name = f"seg-{k:06d}"
            self.current = {"k": k, "file": f"{name}.mp4", "first": index, "start_time": time}
            writer = VideoWriter(os.path.join(self.m.folder, self.current["file"]),
                                 self.width, self.height, self.fps, **self.encoder)
            self.on_temp(writer.temp_path)
            self.encoding = _Threaded(writer) if self.encoders > 1 else writer
            if sidecar_line is not None:
                self.current["sidecar"] = f"{name}.jsonl"
                self.sidecar = open(os.path.join(self.m.folder, f".{name}.jsonl.partial"), "w")
                self.on_temp(self.sidecar.name)
        self.encoding.write(image, time - self.current["start_time"])
        self.current["last"] = index
        self.current["end_time"] = time + 1.0 / self.fps
        if self.sidecar is not None and sidecar_line is not None:
            self.sidecar.write(sidecar_line + "\n")

    def _close_segment(self) -> None:
        seg, encoding = self.current, self.encoding
        self.current = self.encoding = None
        if self.sidecar is not None:
            self.sidecar.close()
            os.replace(self.sidecar.name, os.path.join(self.m.folder, seg["sidecar"]))
            self.sidecar = None
        self.pending.append((seg, encoding))
        if self.encoders == 1:
            self._record(*self.pending.pop(0))

    def _record(self, seg: dict, encoding) -> None:
        """Wait for a segment's encoder and add the segment to the manifest (in order)."""
        encoding.close()
        seg["bytes"] = os.path.getsize(os.path.join(self.m.folder, seg["file"]))
        seg["frames"] = seg["last"] - seg["first"] + 1
        del seg["k"]
        self.m.add(seg)

    def close(self) -> None:
        if self.encoding is not None:
            self._close_segment()
        while self.pending:
            self._record(*self.pending.pop(0))

    def abort(self) -> None:
        for _, encoding in self.pending:
            encoding.abort()
        self.pending = []
        if self.encoding is not None:
            self.encoding.abort()
            self.encoding = None
        if self.sidecar is not None:
            self.sidecar.close()
            if os.path.exists(self.sidecar.name):
                os.unlink(self.sidecar.name)
            self.sidecar = None


# Test hook: seconds to pause inside `join_segments` once its temporary file holds the first
# segment, so tests can deliver a signal or a kill during the join. Unset in normal use.
JOIN_PAUSE_ENV = "LIPGRAPH_TEST_JOIN_PAUSE_S"


def join_segments(manifest: Manifest, output: str, audio_path: str | None = None,
                  sidecar: str | None = None, metadata: dict | None = None,
                  on_temp=None, progress=None) -> None:
    """Copy every segment's packets, shifted to their place, into `output` (no re-encoding)
    and encode the audio once for the whole duration. Atomic: temp file, then rename.
    `on_temp(path)` is told each temporary file before it is created (the runner deletes them
    if this process is killed); `progress()` is called after each segment (a sign of life
    for the stall watchdog)."""
    segs = manifest.segments
    if not segs:
        raise ValueError(f"{manifest.folder}: no segments to join")
    output = os.path.abspath(output)
    fmt = container_format(output)
    with written_aside(output, on_temp) as tmp:
        out = open_output(tmp, fmt, metadata)
        try:
            _copy_segments(manifest, out, audio_path, progress)
            out.close()
        except BaseException:
            try:
                out.close()
            except Exception:
                pass
            raise
        if sidecar:
            _join_sidecars(manifest, sidecar, on_temp)


def _copy_segments(manifest: Manifest, out, audio_path: str | None, progress) -> None:
    segs = manifest.segments
    with av.open(os.path.join(manifest.folder, segs[0]["file"])) as first:
        template = first.streams.video[0]
        stream = out.add_stream_from_template(template)
        seg_tb = Fraction(template.time_base)
    audio = AudioTrack(out, audio_path, probe_audio(audio_path)) if audio_path else None
    for seg in segs:
        shift = round(Fraction(seg["start_time"]).limit_denominator(10**9) / seg_tb)
        with av.open(os.path.join(manifest.folder, seg["file"])) as src:
            vs = src.streams.video[0]
            if Fraction(vs.time_base) != seg_tb:
                raise ValueError(f"{seg['file']}: time base {vs.time_base} differs from {seg_tb}")
            for packet in src.demux(vs):
                if packet.size == 0:
                    continue
                packet.pts = None if packet.pts is None else packet.pts + shift
                packet.dts = None if packet.dts is None else packet.dts + shift
                packet.stream = stream
                packet.time_base = seg_tb
                out.mux(packet)
        if audio is not None:
            audio.encode_until(seg["end_time"])
        if seg is segs[0] and os.environ.get(JOIN_PAUSE_ENV):
            time.sleep(float(os.environ[JOIN_PAUSE_ENV]))
        if progress is not None:
            progress()
    if audio is not None:
        audio.finish(segs[-1]["end_time"])
        audio.close()


def _join_sidecars(manifest: Manifest, path: str, on_temp=None) -> None:
    with written_aside(path, on_temp) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for seg in manifest.segments:
            with open(os.path.join(manifest.folder, seg["sidecar"]), encoding="utf-8") as f:
                shutil.copyfileobj(f, out)


def remove_work_dir(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
