"""A/B comparison of two lip-sync graphs on one clip.

    python -m lipgraph.tools.ab_compare --graphs configs/graphs/musetalk.yaml configs/graphs/surgical.yaml \\
        --video in.mp4 --audio dub.wav --out ab/ --weights ~/MuseTalk/models --lossless \\
        [--syncnet syncnet_v2.model] [--set-a stage.p=v ...] [--set-b ...] [--set ...]

Runs both graphs one after the other (run_graph.py in a subprocess, so each run's timing is
its own), each writing OUT/<name>.mkv (with --lossless: FFV1, RGB) or .mp4 beside its profile,
per-frame sidecar and log, then reads the input and both outputs once, frame by frame in
lockstep (memory stays flat), and writes:

- OUT/side_by_side.mp4: input | A | B, labelled, with the dub as its sound;
- OUT/report.json and OUT/report.md, per graph: per-stage throughput and the bottleneck (from
  the profile); fallbacks with their reasons (any stage's counters); identity outside the
  mouth region (PSNR and SSIM of each face frame against its input frame, only outside the
  region the model may redraw: MuseTalk's blend-mask box, LatentSync's mask warped into the
  frame, from the sidecar; for LatentSync this includes the resampled upper face); temporal stability of the mouth region (mean absolute change between
  consecutive face frames of one shot, inside the edit box resampled to 96 x 96, for the output
  and for the input under the same boxes); cutaway integrity (identical to the input, frame
  count and source order); LSE-C / LSE-D with SyncNet weights. Figures that cannot be computed
  are listed with the reason.

Exit status: 0, or 1 when a run failed (the report then says what it could and why not the rest).

PSNR is over RGB, capped at 100 dB (identical pixels read 100). SSIM is the Gaussian-window
SSIM of Wang et al. (sigma 1.5, 11 taps, K1 0.01, K2 0.03) on BT.601 luma, averaged over the
pixels whose whole window lies inside the frame and outside that region.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSNR_CAP_DB = 100.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5                       # 11-tap window, as scikit-image's gaussian SSIM
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
TEMPORAL_SIZE = 96
PANEL_MAX_HEIGHT = 540


# ----------------------------------------------------------------------------- image metrics


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image, float64 in 0..255."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, peak: float = 255.0) -> float:
    """PSNR in dB over the pixels where `mask` (H x W) is True; inf when they are identical,
    nan when the mask is empty."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"PSNR of images of different shapes {a.shape} and {b.shape}")
    if mask is not None:
        a, b = a[mask], b[mask]
    if a.size == 0:
        return float("nan")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _blur(x: np.ndarray) -> np.ndarray:
    k = cv2.getGaussianKernel(2 * SSIM_RADIUS + 1, SSIM_SIGMA, cv2.CV_64F)
    return cv2.sepFilter2D(x, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT)


def ssim_map(y1: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two gray images (0..255); only pixels at least SSIM_RADIUS from the
    border have a whole window (see `ssim_valid`)."""
    x, y = np.asarray(y1, dtype=np.float64), np.asarray(y2, dtype=np.float64)
    mx, my = _blur(x), _blur(y)
    vx = _blur(x * x) - mx * mx
    vy = _blur(y * y) - my * my
    cxy = _blur(x * y) - mx * my
    num = (2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)
    return num / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))


def ssim_valid(shape: tuple[int, int], box: Sequence[int] | None = None) -> np.ndarray:
    """Pixels whose SSIM window lies inside the frame and clear of `box` (x1, y1, x2, y2)."""
    h, w = shape
    valid = np.zeros((h, w), bool)
    r = SSIM_RADIUS
    valid[r:h - r, r:w - r] = True
    if box is not None:
        x1, y1, x2, y2 = box
        valid[max(0, y1 - r):max(0, y2 + r), max(0, x1 - r):max(0, x2 + r)] = False
    return valid


def ssim(y1: np.ndarray, y2: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean SSIM over `valid` pixels (default: every pixel with a whole window); nan if none."""
    m = ssim_map(y1, y2)
    valid = ssim_valid(m.shape) if valid is None else valid
    return float(m[valid].mean()) if valid.any() else float("nan")


def clip_box(box: Sequence[float] | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A box as whole pixels inside the frame (outer edges rounded outward); None if empty."""
    if box is None:
        return None
    x1, y1 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
    x2, y2 = min(width, int(math.ceil(box[2]))), min(height, int(math.ceil(box[3])))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def outside_mask(shape: tuple[int, int], box: Sequence[int] | None) -> np.ndarray:
    mask = np.ones(shape, bool)
    if box is not None:
        x1, y1, x2, y2 = box
        mask[y1:y2, x1:x2] = False
    return mask


def redrawn_region(side: dict, shape: tuple[int, int]) -> np.ndarray | None:
    """Frame pixels a LatentSync frame's model output may reach (None without the sidecar's
    `restore` record: the edit box is used)."""
    restore = side.get("restore")
    if not restore:
        return None
    from lipgraph.vision.latentsync_align import mouth_region
    from lipgraph.vision.latentsync_mask import keep_mask
    keep = keep_mask(int(restore["res"]), restore.get("mask") or "")
    return mouth_region(np.asarray(restore["affine"]), keep, shape[1], shape[0])


def region(frame: np.ndarray, box: Sequence[int], size: int = TEMPORAL_SIZE) -> np.ndarray:
    x1, y1, x2, y2 = box
    return cv2.resize(frame[y1:y2, x1:x2].astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def summary(values: Sequence[float]) -> dict | None:
    """mean, min and 5th percentile (None for no values)."""
    if not len(values):
        return None
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "p5": float(np.percentile(v, 5)), "n": len(v)}


# ----------------------------------------------------------------------------- per-graph figures


@dataclass
class TemporalStability:
    """Mean absolute change of the mouth region between consecutive face frames of one shot,
    for an output and for its input frames under the same boxes."""

    size: int = TEMPORAL_SIZE
    out_sum: float = 0.0
    in_sum: float = 0.0
    pairs: int = 0
    _prev: tuple | None = None

    def add(self, index: int, src: int, face, edit, out: np.ndarray, inp: np.ndarray) -> None:
        """Frame `index` (output order) from source frame `src`; `edit` clipped to the frame."""
        if face is None or edit is None:
            self._prev = None
            return
        from lipgraph.models.face_detection import iou
        cur = (index, src, face, region(out, edit, self.size), region(inp, edit, self.size))
        prev = self._prev
        # same shot: next output frame, the source moved at most one frame, the face stayed
        if (prev is not None and prev[0] == index - 1 and abs(prev[1] - src) <= 1
                and iou(prev[2], face) > 0.5):
            self.out_sum += float(np.abs(cur[3] - prev[3]).mean())
            self.in_sum += float(np.abs(cur[4] - prev[4]).mean())
            self.pairs += 1
        self._prev = cur

    def result(self) -> dict:
        if not self.pairs:
            return {"pairs": 0, "output": None, "input": None, "ratio": None}
        out, inp = self.out_sum / self.pairs, self.in_sum / self.pairs
        return {"pairs": self.pairs, "output": out, "input": inp, "ratio": out / inp if inp > 0 else None}


@dataclass
class OutputFigures:
    """Everything measured on one output while the videos are read in lockstep."""

    lossless: bool
    psnr: list = field(default_factory=list)
    ssim: list = field(default_factory=list)
    identical_faces: int = 0
    temporal: TemporalStability = field(default_factory=TemporalStability)
    cutaways: int = 0
    cutaways_identical: int = 0
    cutaway_psnr: list = field(default_factory=list)
    conventions: dict = field(default_factory=dict)
    srcs: list = field(default_factory=list)
    index_mismatch: list = field(default_factory=list)
    time_mismatch: list = field(default_factory=list)
    frames: int = 0

    def add(self, k: int, out: np.ndarray, t: float, side: dict, inp: np.ndarray) -> None:
        h, w = out.shape[:2]
        src = int(side["src"])
        self.srcs.append(src)
        if side.get("index") != k:
            self.index_mismatch.append(k)
        if side.get("time") is not None and abs(float(side["time"]) - t) > 1e-3:
            self.time_mismatch.append(k)
        conv = side.get("convention")
        self.conventions[str(conv)] = self.conventions.get(str(conv), 0) + 1
        face = side.get("face")
        if face is None:
            self.cutaways += 1
            same = out.shape == inp.shape and np.array_equal(out, inp)
            self.cutaways_identical += same
            self.cutaway_psnr.append(PSNR_CAP_DB if same else min(PSNR_CAP_DB, psnr(out, inp)))
            self.temporal.add(k, src, None, None, out, inp)
            return
        edit = clip_box(side.get("edit"), w, h)
        redrawn = redrawn_region(side, (h, w))
        if redrawn is None:
            outside, valid = outside_mask((h, w), edit), ssim_valid((h, w), edit)
        else:
            outside = ~redrawn
            window = np.ones((2 * SSIM_RADIUS + 1,) * 2, np.uint8)
            valid = ssim_valid((h, w)) & ~(cv2.dilate(redrawn.astype(np.uint8), window) > 0)
        p = psnr(out, inp, outside)
        if not math.isnan(p):
            self.identical_faces += p == float("inf")
            self.psnr.append(min(PSNR_CAP_DB, p))
        s = ssim(luma(out), luma(inp), valid)
        if not math.isnan(s):
            self.ssim.append(s)
        self.temporal.add(k, src, face, edit, out, inp)

    def result(self, n_input: int | None) -> dict:
        faces = self.frames - self.cutaways
        order: dict[str, Any] = {"output_frames": self.frames, "input_frames": n_input,
                                 "index_mismatches": len(self.index_mismatch),
                                 "time_mismatches": len(self.time_mismatch)}
        if n_input:
            from lipgraph.media.video import pingpong_indices
            forward = list(range(min(n_input, self.frames)))
            order["in_order"] = self.srcs[:len(forward)] == forward
            expected = list(pingpong_indices(n_input, self.frames))
            order["pingpong"] = self.srcs == expected
            order["first_out_of_order"] = next((k for k, (a, b) in enumerate(zip(self.srcs, expected))
                                                if a != b), None)
            order["sources_in_range"] = all(0 <= s < n_input for s in self.srcs)
        return {
            "identity": {"face_frames": faces, "identical_outside_mouth": self.identical_faces,
                         "psnr_db": summary(self.psnr), "ssim": summary(self.ssim)},
            "temporal": self.temporal.result(),
            "cutaways": {"frames": self.cutaways, "identical": self.cutaways_identical,
                         "exact": self.lossless, "psnr_db": summary(self.cutaway_psnr)},
            "frames": order,
            "conventions": dict(sorted(self.conventions.items())),
        }


# ----------------------------------------------------------------------------- inputs


def read_sidecar(path: str) -> list[dict] | None:
    """The per-frame JSON lines a mux sidecar holds; None when there is no file."""
    if not path or not os.path.isfile(path):
        return None
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not a JSON line ({exc})") from None
    return rows


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


# ----------------------------------------------------------------------------- side by side


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


# ----------------------------------------------------------------------------- runs


@dataclass
class Run:
    label: str                       # "A" or "B"
    name: str
    graph: str
    sets: list[str]
    output: str
    sidecar: str | None              # None: the graph's sink writes no sidecar
    profile: str
    log: str
    exit_code: int | None = None
    wall_s: float | None = None
    error: str | None = None


def _graph_facts(path: str) -> tuple[str, dict, str, set]:
    """(name, args, sink stage, sink params) from a graph file, without validating it: the
    run itself validates, with the real arguments."""
    import yaml
    from lipgraph.graph.registry import UnknownStageType, resolve
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"ab_compare: cannot read graph {path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), dict):
        raise SystemExit(f"ab_compare: {path}: not a graph file (no 'stages' mapping)")
    args = {str(k): [v] if isinstance(v, str) else list(v or []) for k, v in (raw.get("args") or {}).items()}
    for needed in ("video", "audio", "output"):
        if needed not in args:
            raise SystemExit(f"ab_compare: {path}: the graph has no --{needed} argument (args: section)")
    sink = str(args["output"][0]).partition(".")[0]
    stage = raw["stages"].get(sink) or {}
    try:
        params = set(resolve(str(stage.get("type"))).params)
    except UnknownStageType as exc:
        raise SystemExit(f"ab_compare: {path}: stage {sink!r}: {exc}") from None
    name = str(raw.get("name") or os.path.splitext(os.path.basename(path))[0])
    return name, args, sink, params


def plan_runs(graphs: Sequence[str], out_dir: str, sets_common: Sequence[str],
              sets_each: Sequence[Sequence[str]], lossless: bool, weights: str | None = None) -> list[Run]:
    """Output paths and --set lines of both runs (names from the graphs, made distinct)."""
    facts = [_graph_facts(path) for path in graphs]
    for path, (_, args, _, _) in zip(graphs, facts):
        if weights and "weights" not in args:
            raise SystemExit(f"ab_compare: {path}: the graph has no --weights argument; "
                             "point its stages at weights with --set-a / --set-b instead")
    names = [f[0] for f in facts]
    if names[0] == names[1]:
        names = [f"{names[0]}_a", f"{names[1]}_b"]
    runs = []
    for label, (_, _, sink, params), path, name, own in zip("AB", facts, graphs, names, sets_each):
        output = os.path.join(out_dir, name + (".mkv" if lossless else ".mp4"))
        sets = list(sets_common) + list(own)
        if lossless:
            sets += [f"{sink}.codec=ffv1", f"{sink}.pix_fmt=bgr0"]
        sidecar = None
        if "sidecar" in params:
            sidecar = output + ".frames.jsonl"
            sets.append(f"{sink}.sidecar={sidecar}")
        runs.append(Run(label, name, os.path.abspath(path), sets, output, sidecar,
                        output + ".profile.json", os.path.join(out_dir, name + ".log")))
    return runs


def execute(run: Run, video: str, audio: str, weights: str | None, runner: str) -> None:
    """Run one graph in a subprocess; its stdout and stderr go to `run.log`."""
    cmd = [sys.executable, os.path.join(ROOT, "run_graph.py"), run.graph, "--runner", runner,
           "--video", video, "--audio", audio, "--output", run.output]
    if weights:
        cmd += ["--weights", weights]
    for s in run.sets:
        cmd += ["--set", s]
    for stale in (run.output, run.profile, run.sidecar):
        if stale and os.path.exists(stale):
            os.remove(stale)
    t0 = time.perf_counter()
    with open(run.log, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        run.exit_code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    run.wall_s = round(time.perf_counter() - t0, 3)
    if run.exit_code != 0:
        with open(run.log, encoding="utf-8", errors="replace") as f:
            tail = f.read().splitlines()[-15:]
        run.error = f"run_graph.py exited with status {run.exit_code}:\n" + "\n".join(tail)


# ----------------------------------------------------------------------------- profile figures


def profile_figures(profile: dict) -> dict:
    """Per-stage throughput and the bottleneck; fallback counters with their reasons."""
    stages = {}
    fallbacks: dict[str, dict] = {}
    total = 0
    for name, s in profile.get("stages", {}).items():
        stages[name] = {"type": s.get("type"), "workers": s.get("workers"), "items_in": s.get("items_in"),
                        "items_out": s.get("items_out"), "items_per_s": s.get("throughput_ips"),
                        "capacity_per_s": s.get("capacity_ips"), "busy_s": s.get("busy_s"),
                        "utilization": s.get("utilization"), "mean_batch": s.get("mean_batch"),
                        "setup_s": s.get("setup_s")}
        counters, reasons = s.get("counters") or {}, s.get("reasons") or {}
        keys = [k for k in counters if "fallback" in k] + [k for k in reasons if "fallback" not in k]
        for key in dict.fromkeys(keys):
            entry = {"count": counters.get(key, sum((reasons.get(key) or {}).values())),
                     "reasons": dict(reasons.get(key) or {})}
            fallbacks.setdefault(name, {})[key] = entry
            if "fallback" in key and key.endswith("frames"):
                total += entry["count"]
    frames = profile.get("items_done")
    wall = profile.get("stream_wall_s") or 0
    return {
        "throughput": {"status": profile.get("status"), "runner": profile.get("runner"),
                       "wall_s": profile.get("wall_s"), "stream_wall_s": profile.get("stream_wall_s"),
                       "frames": frames, "frames_per_s": round(frames / wall, 3) if frames and wall else None,
                       "bottleneck": profile.get("bottleneck"), "stages": stages,
                       "peak_rss_bytes": profile.get("peak_rss_total_bytes"),
                       "cuda_peak_bytes": profile.get("cuda_peak_bytes")},
        "fallbacks": {"frames": total, "by_stage": fallbacks},
        "notes": [" ".join(str(x) for x in n) if isinstance(n, (list, tuple)) else str(n)
                  for n in profile.get("notes") or []],
    }


# ----------------------------------------------------------------------------- analysis


def analyse(video: str, audio: str, runs: Sequence[Run], out_dir: str, lossless: bool,
            side_by_side: bool = True) -> tuple[dict, list[str]]:
    """Read the input and both outputs once in lockstep: per-graph figures, side_by_side.mp4.
    Returns (figures per label, reasons for what could not be computed)."""
    from lipgraph.media.video import probe_video
    from lipgraph.media.writer import VideoWriter
    info = probe_video(video)
    n_input = info.frame_count
    missing: list[str] = []
    sidecars, figures, readers = {}, {}, {}
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
    return results, missing


def lse_figures(run: Run, audio: str, syncnet, **options) -> dict:
    """LSE-C / LSE-D of one output (face boxes from its sidecar, sound from the output file)."""
    from lipgraph.media.audio import read_audio
    from lipgraph.media.video import VideoReader, probe_video
    from lipgraph.models.syncnet import lse_tracks
    side = read_sidecar(run.sidecar) if run.sidecar else None
    if side is None:
        return {"computed": False, "why": "no per-frame face boxes (no sidecar)"}
    try:
        sound = read_audio(run.output, 16000)
    except ValueError:
        sound = read_audio(audio, 16000)
    fps = probe_video(run.output).fps
    try:
        with VideoReader(run.output) as frames:
            tracks = lse_tracks(frames, [s.get("face") for s in side], sound, fps, model=syncnet, **options)
    except ValueError as exc:       # e.g. the sidecar names more frames than the video holds
        return {"computed": False, "why": f"{run.output}: {exc}"}
    if not tracks:
        return {"computed": False,
                "why": f"no face track of more than {options.get('min_track')} frames (at 25 fps) with "
                       f"a mean face size above {options.get('min_face_size')} px"}
    return {"computed": True, "lse_c": float(np.mean([t["lse_c"] for t in tracks])),
            "lse_d": float(np.mean([t["lse_d"] for t in tracks])), "tracks": tracks}


# ----------------------------------------------------------------------------- report


def _clean(x):
    """JSON-safe: non-finite floats become None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        return _clean(x.item())
    return x


def _f(v, spec="{:.2f}") -> str:
    return "-" if v is None else spec.format(v)


def _stats(d: dict | None, spec="{:.2f}") -> str:
    return "-" if not d else f"mean {_f(d['mean'], spec)}, min {_f(d['min'], spec)}, p5 {_f(d['p5'], spec)}"


def write_markdown(report: dict, path: str) -> None:
    lines = ["# A/B comparison", ""]
    inp = report["input"]
    lines += [f"Input: `{inp['video']}` ({inp['width']}x{inp['height']}, {inp['frames']} frames at "
              f"{inp['fps']:.3f} fps), dub `{inp['audio']}`.",
              f"Outputs {'lossless (FFV1, RGB)' if report['settings']['lossless'] else 'H.264'}; "
              f"runner `{report['settings']['runner']}`; graphs run one after the other.", ""]
    if report["settings"]["common_sets"]:
        lines += ["Sets for both: " + ", ".join(f"`{s}`" for s in report["settings"]["common_sets"]), ""]
    graphs = report["graphs"]
    for label, g in graphs.items():
        own = ", ".join(f"`{s}`" for s in g["sets_own"])
        lines.append(f"- **{label}**: `{g['name']}` from `{g['graph']}`" + (f", sets: {own}" if own else ""))
    lines.append("")

    def row(title, fn):
        lines.append(f"| {title} | " + " | ".join(fn(g) for g in graphs.values()) + " |")

    lines += ["## Summary", "", "| | " + " | ".join(f"{l}: {g['name']}" for l, g in graphs.items()) + " |",
              "|---|" + "---|" * len(graphs)]
    row("exit status", lambda g: str(g["exit_code"]))
    row("frames out", lambda g: str((g.get("throughput") or {}).get("frames", "-")))
    row("frames/s (stream)", lambda g: _f((g.get("throughput") or {}).get("frames_per_s"), "{:.2f}"))
    row("wall s (run)", lambda g: _f(g.get("wall_s")))
    def bottleneck(g):
        b = (g.get("throughput") or {}).get("bottleneck")
        return "-" if not b else f"{b['stage']} ({100 * b['utilization']:.0f}%)"
    row("bottleneck", bottleneck)
    row("fallback frames", lambda g: str((g.get("fallbacks") or {}).get("frames", "-")))
    row("PSNR outside mouth region, dB", lambda g: _stats(((g.get("identity") or {}).get("psnr_db"))))
    row("SSIM outside mouth region", lambda g: _stats(((g.get("identity") or {}).get("ssim")), "{:.4f}"))
    row("mouth change out / in", lambda g: "-" if not (g.get("temporal") or {}).get("pairs") else
        f"{_f(g['temporal']['output'])} / {_f(g['temporal']['input'])} (x{_f(g['temporal']['ratio'])})")
    row("cutaways identical", lambda g: "-" if not g.get("cutaways") else
        f"{g['cutaways']['identical']} / {g['cutaways']['frames']}")
    row("source order", lambda g: "-" if "in_order" not in (g.get("frames") or {}) else
        ("in order" if g["frames"]["in_order"] else "OUT OF ORDER")
        + (", ping-pong" if g["frames"].get("pingpong") else ""))
    row("LSE-C / LSE-D", lambda g: "-" if not (g.get("lse") or {}).get("computed") else
        f"{g['lse']['lse_c']:.3f} / {g['lse']['lse_d']:.3f}")
    lines.append("")

    for label, g in graphs.items():
        lines += [f"## {label}: {g['name']}", ""]
        if g.get("error"):
            lines += ["```", g["error"], "```", ""]
        tp = g.get("throughput")
        if tp:
            lines += ["| stage | type | in | out | items/s | capacity/s | busy s | util | batch |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for name, s in tp["stages"].items():
                util = None if s["utilization"] is None else 100 * s["utilization"]
                lines.append(f"| {name} | {s['type']} | {s['items_in']} | {s['items_out']} | "
                             f"{_f(s['items_per_s'], '{:.1f}')} | {_f(s['capacity_per_s'], '{:.1f}')} | "
                             f"{_f(s['busy_s'])} | {_f(util, '{:.0f}%')} | {_f(s['mean_batch'], '{:.1f}')} |")
            lines.append("")
        fb = (g.get("fallbacks") or {}).get("by_stage") or {}
        for stage, entries in fb.items():
            for key, e in entries.items():
                why = ", ".join(f"{r} x{c}" for r, c in e["reasons"].items()) or "no reason given"
                lines.append(f"- fallback `{stage}.{key}`: {e['count']} ({why})")
        for note in g.get("notes") or []:
            lines.append(f"- note: {note}")
        if g.get("conventions"):
            by = ", ".join(f"{k} {v}" for k, v in g["conventions"].items())
            lines.append(f"- frames by convention: {by}")
        fr = g.get("frames") or {}
        if fr:
            lines.append(f"- frames: output {fr.get('output_frames')}, input {fr.get('input_frames')}, "
                         f"sidecar lines {fr.get('sidecar_lines', '-')}, index mismatches "
                         f"{fr.get('index_mismatches', '-')}, time mismatches "
                         f"{fr.get('time_mismatches', '-')}")
        if (g.get("lse") or {}).get("tracks"):
            for t in g["lse"]["tracks"]:
                lines.append(f"- SyncNet track from frame {t['start_frame']} ({t['frames']} frames): offset "
                             f"{t['offset']}, LSE-C {t['lse_c']:.3f}, LSE-D {t['lse_d']:.3f}")
        lines.append("")
    if report["not_computed"]:
        lines += ["## Not computed", ""] + [f"- {m}" for m in report["not_computed"]] + [""]
    lines += ["## How the figures are made", "",
              "- PSNR over RGB, capped at 100 dB (identical pixels read 100); SSIM on BT.601 luma, Gaussian "
              "window (sigma 1.5, 11 taps), averaged over pixels whose window lies inside the frame and "
              "clear of the mouth region (MuseTalk: the blend mask's box; LatentSync: its mask warped into "
              "the frame, so the resampled upper face counts). Both compare each face frame with the input "
              "frame it came from.",
              "- Mouth change: mean absolute difference (0..255) between consecutive face frames of one "
              f"shot, inside the edit box resampled to {TEMPORAL_SIZE}x{TEMPORAL_SIZE}; the input figure "
              "uses the same boxes on the input frames.",
              "- LSE-C / LSE-D: SyncNet (syncnet_v2) over face tracks at 25 fps, offsets -15..15, "
              "averaged over tracks (Wav2Lip's evaluation); higher LSE-C and lower LSE-D are better.", ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def compare(graphs: Sequence[str], video: str, audio: str, out_dir: str, *, weights: str | None = None,
            syncnet: str | None = None, sets: Sequence[str] = (), sets_a: Sequence[str] = (),
            sets_b: Sequence[str] = (), runner: str = "process", lossless: bool = False,
            lse_min_track: int = 100, lse_min_face: float = 100.0) -> dict:
    """Run both graphs, measure, write side_by_side.mp4, report.json and report.md; return the report."""
    from lipgraph.media.audio import probe_audio
    from lipgraph.media.video import probe_video
    if len(graphs) != 2:
        raise SystemExit("ab_compare: --graphs takes exactly two graph files")
    for what, p in (("video", video), ("audio", audio)):
        if not os.path.isfile(p):
            raise SystemExit(f"ab_compare: {what} file not found: {p}")
    if syncnet and not os.path.isfile(syncnet):
        raise SystemExit(f"ab_compare: SyncNet weights not found: {syncnet} (expected syncnet_v2.model)")
    video, audio = os.path.abspath(video), os.path.abspath(audio)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    runs = plan_runs(graphs, out_dir, sets, (sets_a, sets_b), lossless, weights)
    for run in runs:
        print(f"ab_compare: running {run.label} ({run.name}) -> {run.output}", file=sys.stderr, flush=True)
        execute(run, video, audio, weights, runner)
        if run.error:
            print(f"ab_compare: {run.label} failed, see {run.log}", file=sys.stderr)

    print("ab_compare: measuring", file=sys.stderr, flush=True)
    figures, missing = analyse(video, audio, runs, out_dir, lossless)

    model = None
    if syncnet:
        from lipgraph.models.syncnet import load_syncnet
        model = load_syncnet(syncnet)
    else:
        missing.append("LSE-C / LSE-D (both graphs): no SyncNet weights (pass --syncnet syncnet_v2.model)")

    info, ainfo = probe_video(video), probe_audio(audio)
    graphs_out = {}
    for run, own in zip(runs, (sets_a, sets_b)):
        g: dict[str, Any] = {"name": run.name, "graph": run.graph, "sets": run.sets, "sets_own": list(own),
                             "output": run.output, "sidecar": run.sidecar, "profile": run.profile,
                             "log": run.log, "exit_code": run.exit_code, "wall_s": run.wall_s,
                             "error": run.error}
        if os.path.isfile(run.profile):
            with open(run.profile, encoding="utf-8") as f:
                g.update(profile_figures(json.load(f)))
        else:
            missing.append(f"{run.label} ({run.name}): throughput and fallbacks: no profile at {run.profile}")
        g.update(figures.get(run.label, {}))
        if model is not None and run.exit_code == 0:
            g["lse"] = lse_figures(run, audio, model, min_track=lse_min_track, min_face_size=lse_min_face)
            if not g["lse"]["computed"]:
                missing.append(f"{run.label} ({run.name}): LSE-C / LSE-D: {g['lse']['why']}")
        elif model is None:
            g["lse"] = {"computed": False, "why": "no SyncNet weights (pass --syncnet syncnet_v2.model)"}
        else:
            g["lse"] = {"computed": False, "why": "the run failed"}
        graphs_out[run.label] = g

    sbs = os.path.join(out_dir, "side_by_side.mp4")
    report = {
        "input": {"video": video, "audio": audio, "frames": info.frame_count, "fps": info.fps,
                  "width": info.width, "height": info.height, "audio_s": ainfo.duration_s},
        "settings": {"lossless": lossless, "runner": runner, "weights": weights, "syncnet": syncnet,
                     "common_sets": list(sets), "psnr_cap_db": PSNR_CAP_DB,
                     "ssim": {"sigma": SSIM_SIGMA, "taps": 2 * SSIM_RADIUS + 1, "on": "BT.601 luma"},
                     "temporal_size": TEMPORAL_SIZE,
                     "lse": {"min_track": lse_min_track, "min_face_size": lse_min_face, "vshift": 15}},
        "graphs": graphs_out,
        "side_by_side": sbs if os.path.isfile(sbs) else None,
        "not_computed": missing,
    }
    report = _clean(report)
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, allow_nan=False)
    write_markdown(report, os.path.join(out_dir, "report.md"))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lipgraph.tools.ab_compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graphs", nargs=2, required=True, metavar=("A.yaml", "B.yaml"))
    p.add_argument("--video", required=True)
    p.add_argument("--audio", required=True, help="the dub (new audio track)")
    p.add_argument("--out", required=True, help="folder for outputs and the report")
    p.add_argument("--weights", default=None, help="weights folder passed to both graphs")
    p.add_argument("--syncnet", default=None, metavar="PATH", help="syncnet_v2.model for LSE-C / LSE-D")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="STAGE.PARAM=VALUE",
                   help="param override for both graphs (repeatable)")
    p.add_argument("--set-a", dest="sets_a", action="append", default=[], metavar="STAGE.PARAM=VALUE")
    p.add_argument("--set-b", dest="sets_b", action="append", default=[], metavar="STAGE.PARAM=VALUE")
    p.add_argument("--runner", choices=("process", "inline"), default="process")
    p.add_argument("--lossless", action="store_true", help="FFV1 RGB outputs: cutaways compared exactly")
    p.add_argument("--lse-min-track", type=int, default=100,
                   help="SyncNet scores face tracks longer than this many frames at 25 fps (default 100)")
    p.add_argument("--lse-min-face", type=float, default=100.0,
                   help="... whose mean face box side exceeds this many pixels (default 100)")
    args = p.parse_args(argv)
    report = compare(args.graphs, args.video, args.audio, args.out, weights=args.weights,
                     syncnet=args.syncnet, sets=args.sets, sets_a=args.sets_a, sets_b=args.sets_b,
                     runner=args.runner, lossless=args.lossless, lse_min_track=args.lse_min_track,
                     lse_min_face=args.lse_min_face)
    print(f"ab_compare: report in {os.path.join(os.path.abspath(args.out), 'report.md')}", file=sys.stderr)
    for line in report["not_computed"]:
        print(f"ab_compare: not computed: {line}", file=sys.stderr)
    failed = [g for g in report["graphs"].values() if g["exit_code"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
