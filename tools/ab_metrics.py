"""The A/B figures of one output against its input: PSNR and SSIM outside the region the model
may redraw, temporal stability of the mouth region, cutaway integrity, frame order, LSE.

PSNR is over RGB, capped at 100 dB (identical pixels read 100). SSIM is the Gaussian-window
SSIM of Wang et al. (sigma 1.5, 11 taps, K1 0.01, K2 0.03) on BT.601 luma, averaged over the
pixels whose whole window lies inside the frame and outside that region.

A frame may show several dubbed faces (the sidecar's `faces`, see `ab_runs.faces_of`): the
frame's identity excludes every face's region; each face (by track id) also has its own
figures: identity inside its face box, mouth-region stability, frames by model, LSE.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

from .ab_runs import Run, faces_of, read_sidecar

PSNR_CAP_DB = 100.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5                       # 11-tap window, as scikit-image's gaussian SSIM
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
TEMPORAL_SIZE = 96


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


def redrawn_region(face: dict, shape: tuple[int, int]) -> np.ndarray:
    """Frame pixels (bool H x W) the model may redraw for one face: LatentSync's mask warped
    into the frame (the sidecar's `restore`), else the face's edit box (none without one)."""
    h, w = shape
    restore = face.get("restore")
    if restore:
        from lipgraph.vision.latentsync_align import mouth_region
        from lipgraph.vision.latentsync_mask import keep_mask
        keep = keep_mask(int(restore["res"]), restore.get("mask") or "")
        return mouth_region(np.asarray(restore["affine"]), keep, w, h)
    mask = np.zeros(shape, bool)
    box = clip_box(face.get("edit"), w, h)
    if box is not None:
        x1, y1, x2, y2 = box
        mask[y1:y2, x1:x2] = True
    return mask


def region(frame: np.ndarray, box: Sequence[int], size: int = TEMPORAL_SIZE) -> np.ndarray:
    x1, y1, x2, y2 = box
    return cv2.resize(frame[y1:y2, x1:x2].astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def summary(values: Sequence[float]) -> dict | None:
    """mean, min and 5th percentile (None for no values)."""
    if not len(values):
        return None
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "p5": float(np.percentile(v, 5)), "n": len(v)}


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
class Identity:
    """PSNR (capped) and SSIM of face frames outside the redrawn regions, and how many of them
    are identical there."""

    psnr: list = field(default_factory=list)
    ssim: list = field(default_factory=list)
    identical: int = 0

    def add_psnr(self, p: float) -> None:
        if not math.isnan(p):
            self.identical += p == float("inf")
            self.psnr.append(min(PSNR_CAP_DB, p))

    def result(self) -> dict:
        return {"identical_outside_mouth": self.identical, "psnr_db": summary(self.psnr),
                "ssim": summary(self.ssim)}


@dataclass
class FaceFigures:
    """One face of an output (a track id, or a place on the frame): its frames and models, its
    identity inside its face box outside every redrawn region (the upper face), and the
    temporal stability of its mouth region."""

    frames: int = 0
    models: Counter = field(default_factory=Counter)
    identity: Identity = field(default_factory=Identity)
    temporal: TemporalStability = field(default_factory=TemporalStability)

    def add(self, k: int, src: int, face: dict, out: np.ndarray, inp: np.ndarray, outside: np.ndarray,
            valid: np.ndarray, smap: np.ndarray) -> None:
        h, w = out.shape[:2]
        self.frames += 1
        self.models[str(face.get("model"))] += 1
        box = clip_box(face["face"], w, h)
        if box is not None:
            x1, y1, x2, y2 = box
            self.identity.add_psnr(psnr(out[y1:y2, x1:x2], inp[y1:y2, x1:x2], outside[y1:y2, x1:x2]))
            inside = valid[y1:y2, x1:x2]
            if inside.any():
                self.identity.ssim.append(float(smap[y1:y2, x1:x2][inside].mean()))
        self.temporal.add(k, src, face["face"], clip_box(face.get("edit"), w, h), out, inp)

    def result(self) -> dict:
        return {"frames": self.frames, "models": dict(sorted(self.models.items())),
                "identity": self.identity.result(), "temporal": self.temporal.result()}


@dataclass
class OutputFigures:
    """Everything measured on one output while the videos are read in lockstep."""

    lossless: bool
    identity: Identity = field(default_factory=Identity)
    faces: dict = field(default_factory=dict)       # key -> FaceFigures
    cutaways: int = 0
    cutaways_identical: int = 0
    cutaway_psnr: list = field(default_factory=list)
    models: Counter = field(default_factory=Counter)
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
        self.models[str(side.get("model"))] += 1
        faces = faces_of(side)
        if not faces:
            self.cutaways += 1
            same = out.shape == inp.shape and np.array_equal(out, inp)
            self.cutaways_identical += same
            self.cutaway_psnr.append(PSNR_CAP_DB if same else min(PSNR_CAP_DB, psnr(out, inp)))
            return
        # identity outside what any face's model may redraw; SSIM where no window reaches it
        redrawn = np.zeros((h, w), bool)
        for face in faces:
            redrawn |= redrawn_region(face, (h, w))
        outside = ~redrawn
        window = np.ones((2 * SSIM_RADIUS + 1,) * 2, np.uint8)
        valid = ssim_valid((h, w)) & ~(cv2.dilate(redrawn.astype(np.uint8), window) > 0)
        self.identity.add_psnr(psnr(out, inp, outside))
        smap = ssim_map(luma(out), luma(inp))
        if valid.any():
            self.identity.ssim.append(float(smap[valid].mean()))
        for face in faces:
            self.faces.setdefault(face["key"], FaceFigures()).add(k, src, face, out, inp, outside, valid, smap)

    def result(self, n_input: int | None) -> dict:
        faces = self.frames - self.cutaways
        order: dict[str, Any] = {"output_frames": self.frames, "input_frames": n_input,
                                 "index_mismatches": len(self.index_mismatch),
                                 "time_mismatches": len(self.time_mismatch)}
        if n_input:
            from lipgraph.media.pingpong import pingpong_indices
            forward = list(range(min(n_input, self.frames)))
            order["in_order"] = self.srcs[:len(forward)] == forward
            expected = list(pingpong_indices(n_input, self.frames))
            order["pingpong"] = self.srcs == expected
            order["first_out_of_order"] = next((k for k, (a, b) in enumerate(zip(self.srcs, expected))
                                                if a != b), None)
            order["sources_in_range"] = all(0 <= s < n_input for s in self.srcs)
        parts = [f.temporal for f in self.faces.values()]
        temporal = TemporalStability(out_sum=sum(t.out_sum for t in parts), in_sum=sum(t.in_sum for t in parts),
                                     pairs=sum(t.pairs for t in parts))
        return {
            "identity": {"face_frames": faces, **self.identity.result()},
            "temporal": temporal.result(),
            "faces": {key: f.result() for key, f in self.faces.items()},
            "cutaways": {"frames": self.cutaways, "identical": self.cutaways_identical,
                         "exact": self.lossless, "psnr_db": summary(self.cutaway_psnr)},
            "frames": order,
            "models": dict(sorted(self.models.items())),
        }


def face_fallbacks(faces: dict, fallback_frames: int | None) -> None:
    """Fallback frames per face: a window that fails is redone with MuseTalk, the only
    fallback, so in a run that counted fallbacks every MuseTalk face is one."""
    for f in faces.values():
        f["fallback_frames"] = None if fallback_frames is None else (
            f["models"].get("musetalk", 0) if fallback_frames else 0)


def lse_figures(run: Run, audio: str, syncnet, **options) -> dict:
    """LSE-C / LSE-D of one output (face boxes from its sidecar, sound from the output file):
    each face of the sidecar (track id or place) scored on its own, the video read once per
    face; the figures are means over every track, and per face under `faces`."""
    from lipgraph.media.audio import read_audio
    from lipgraph.media.probe import probe_video
    from lipgraph.media.video import VideoReader
    from lipgraph.models.lse import lse_tracks
    side = read_sidecar(run.sidecar) if run.sidecar else None
    if side is None:
        return {"computed": False, "why": "no per-frame face boxes (no sidecar)"}
    boxes: dict[str, list] = {}
    for i, row in enumerate(side):
        for face in faces_of(row):
            boxes.setdefault(face["key"], [None] * len(side))[i] = face["face"]
    try:
        sound = read_audio(run.output, 16000)
    except ValueError:
        sound = read_audio(audio, 16000)
    fps = probe_video(run.output).fps
    tracks, faces = [], {}
    try:
        for key, per_frame in boxes.items():
            with VideoReader(run.output) as frames:
                found = lse_tracks(frames, per_frame, sound, fps, model=syncnet, **options)
            tracks += [dict(t, face=key) for t in found]
            if found:
                faces[key] = _lse_means(found)
    except ValueError as exc:       # e.g. the sidecar names more frames than the video holds
        return {"computed": False, "why": f"{run.output}: {exc}"}
    if not tracks:
        return {"computed": False,
                "why": f"no face track of more than {options.get('min_track')} frames (at 25 fps) with "
                       f"a mean face size above {options.get('min_face_size')} px"}
    return {"computed": True, **_lse_means(tracks), "tracks": tracks, "faces": faces}


def _lse_means(tracks: list[dict]) -> dict:
    return {"lse_c": float(np.mean([t["lse_c"] for t in tracks])),
            "lse_d": float(np.mean([t["lse_d"] for t in tracks]))}
