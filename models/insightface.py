"""InsightFace ``buffalo_l`` face detection and 106-point landmarks on onnxruntime.

Two models of the pack, as LatentSync (>= April 2025) uses them through
``FaceAnalysis(allowed_modules=["detection", "landmark_2d_106"])``:
- ``det_10g.onnx``: SCRFD-10GF. One input [1, 3, H, W] (H, W free), nine outputs, per stride
  8, 16, 32: scores [N, 1], box distances [N, 4], keypoint offsets [N, 10], N = (H/s)(W/s) * 2
  (two anchors per location); the outputs come grouped (three scores, three boxes, three keypoint
  sets). Input (pixel - 127.5) / 128, RGB channel order.
- ``2d106det.onnx``: input [B, 3, 192, 192] of raw 0..255 pixels (the model subtracts its own
  mean), RGB channel order; output [B, 212]: 106 (x, y) pairs in [-1, 1] over the crop.

InsightFace takes BGR images and swaps them to RGB for both networks. Our frames are RGB, so they
are fed as they are. LatentSync hands its RGB frames to InsightFace unchanged, so its networks see
the channels swapped; ``rgb_as_bgr=True`` reproduces that.

Frames are RGB uint8 [H, W, 3]; boxes (x1, y1, x2, y2) in pixels; landmarks in the pixel-index
convention of ``cv2.warpAffine``, the one InsightFace's crop transform uses.
"""

from __future__ import annotations

import os
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from lipgraph.models.face_detection import box_iou, face_batches, nms

DETECTOR_FILE = "det_10g.onnx"
LANDMARK_FILE = "2d106det.onnx"
NUM_LANDMARKS = 106
LATENTSYNC_DET_SIZE = (512, 512)  # LatentSync's det_size since May 2025 (InsightFace's default is 640)
SCRFD_MEAN, SCRFD_STD = 127.5, 128.0
LANDMARK_MEAN, LANDMARK_STD = 0.0, 1.0
LANDMARK_CROP_MARGIN = 1.5  # crop side = 1.5 x the longer box side

Box = Sequence[float]
Providers = Union[None, str, Sequence[Union[str, Tuple[str, dict]]]]


class InsightFaceModelError(RuntimeError):
    """An InsightFace ONNX file is missing, unreadable, or not the expected model."""


# The weights table's entries for the two files (models/weight_table.py), by file name.
INSIGHTFACE_FILES = {"insightface_detector": DETECTOR_FILE, "insightface_landmarks": LANDMARK_FILE}


# --------------------------------------------------------------------------- sessions


def resolve_providers(providers: Providers = None) -> list:
    """onnxruntime providers: None = CUDA when onnxruntime has it, else CPU; "cpu", "cuda" or
    "cuda:N"; or an explicit list. Unavailable ones are dropped (with a warning); CPU stays last."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if providers is None:
        wanted: list = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
    elif isinstance(providers, str):
        kind, _, index = providers.partition(":")
        if kind == "cpu":
            wanted = []
        elif kind == "cuda":
            wanted = [("CUDAExecutionProvider", {"device_id": int(index or 0)})]
        else:
            raise ValueError(f"unknown device {providers!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    else:
        wanted = list(providers)
    kept = [p for p in wanted if (p[0] if isinstance(p, tuple) else p) in available]
    dropped = [p for p in wanted if p not in kept]
    if dropped:
        warnings.warn(f"onnxruntime lacks {dropped}; running on {kept or 'CPU'}", RuntimeWarning, stacklevel=3)
    names = [p[0] if isinstance(p, tuple) else p for p in kept]
    return kept if "CPUExecutionProvider" in names else kept + ["CPUExecutionProvider"]


def load_session(path: str, providers: Providers = None):
    """An onnxruntime session for ``path``; errors name the file."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise InsightFaceModelError(f"InsightFace model not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, sess_options=options, providers=resolve_providers(providers))
    except Exception as exc:  # noqa: BLE001 - report the file with the cause
        raise InsightFaceModelError(f"{path}: cannot be loaded as an ONNX model ({exc})") from exc


def _dims(shape) -> List[Optional[int]]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def _signature(session) -> str:
    ins = ", ".join(f"{i.name}{list(i.shape)}" for i in session.get_inputs())
    outs = ", ".join(f"{o.name}{list(o.shape)}" for o in session.get_outputs())
    return f"inputs {ins}; outputs {outs}"


# --------------------------------------------------------------------------- SCRFD decoding


def scrfd_layout(num_outputs: int) -> Tuple[Tuple[int, ...], int, bool]:
    """(strides, anchors per location, has keypoints) for an SCRFD export with that many outputs."""
    layouts = {6: ((8, 16, 32), 2, False), 9: ((8, 16, 32), 2, True),
               10: ((8, 16, 32, 64, 128), 1, False), 15: ((8, 16, 32, 64, 128), 1, True)}
    if num_outputs not in layouts:
        raise ValueError(f"not an SCRFD output layout: {num_outputs} outputs (expected 6, 9, 10 or 15)")
    return layouts[num_outputs]


def anchor_centers(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    """[height * width * num_anchors, 2] (x, y): each grid cell's top-left corner times the stride,
    repeated per anchor, row by row."""
    ys, xs = np.mgrid[:height, :width]
    centers = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centers, num_anchors, axis=0)


def decode_scrfd(scores: Sequence[np.ndarray], distances: Sequence[np.ndarray],
                 keypoints: Optional[Sequence[np.ndarray]], input_size: Tuple[int, int],
                 strides: Sequence[int] = (8, 16, 32), num_anchors: int = 2,
                 threshold: float = 0.5) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Raw per-stride outputs -> boxes [K, 4], scores [K], keypoints [K, 5, 2] (or None) in the
    network input's pixels, for anchors scoring >= ``threshold``.

    ``input_size`` is (width, height). Distances and offsets are in stride units: a box is
    (cx - d0, cy - d1, cx + d2, cy + d3) * stride around its anchor point, a keypoint is
    (cx + dx, cy + dy) * stride.
    """
    width, height = input_size
    all_boxes, all_scores, all_kps = [], [], []
    for i, stride in enumerate(strides):
        centers = anchor_centers(height // stride, width // stride, stride, num_anchors)
        s = np.asarray(scores[i], dtype=np.float32).reshape(-1)
        d = np.asarray(distances[i], dtype=np.float32).reshape(-1, 4) * stride
        if len(s) != len(centers) or len(d) != len(centers):
            raise ValueError(f"stride {stride}: {len(s)} scores / {len(d)} boxes for {len(centers)} anchors "
                             f"of a {width} x {height} input")
        keep = s >= threshold
        c = centers[keep]
        all_boxes.append(np.concatenate([c - d[keep][:, :2], c + d[keep][:, 2:]], 1))
        all_scores.append(s[keep])
        if keypoints is not None:
            k = np.asarray(keypoints[i], dtype=np.float32).reshape(len(centers), -1, 2) * stride
            all_kps.append(c[:, None, :] + k[keep])
    boxes = np.concatenate(all_boxes).astype(np.float32)
    kps = np.concatenate(all_kps).astype(np.float32) if keypoints is not None else None
    return boxes, np.concatenate(all_scores).astype(np.float32), kps


def letterbox(frame: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, float]:
    """The frame resized (bilinear, aspect kept) into the top-left of a black ``size`` (w, h)
    canvas, and the scale factor (canvas pixels per frame pixel)."""
    width, height = size
    fh, fw = frame.shape[:2]
    if fh / fw > height / width:
        new_h, new_w = height, int(height / (fh / fw))
    else:
        new_w, new_h = width, int(width * (fh / fw))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(frame, (new_w, new_h))
    return canvas, new_h / fh


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image array, got shape {getattr(frame, 'shape', None)}")


def _network_input(images: np.ndarray, mean: float, std: float, rgb_as_bgr: bool) -> np.ndarray:
    """[B, H, W, 3] uint8 -> [B, 3, H, W] float32 in the networks' RGB order."""
    x = images[..., ::-1] if rgb_as_bgr else images
    x = (x.astype(np.float32) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class SCRFDDetector:
    """InsightFace's SCRFD face detector (``det_10g.onnx``).

    ``det_size`` (w, h) is the letterboxed network input, used when the model's own input size is
    free. ``detect`` gives one float32 array per frame, best first: [K, 15] rows of box (x1, y1,
    x2, y2), score and five keypoints (x, y), or [K, 5] for a model without keypoints.
    """

    def __init__(self, path: str, det_size: Tuple[int, int] = (640, 640), score_threshold: float = 0.5,
                 nms_threshold: float = 0.4, providers: Providers = None, rgb_as_bgr: bool = False) -> None:
        self.path = path
        self.session = load_session(path, providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        try:
            self.strides, self.num_anchors, self.use_kps = scrfd_layout(len(outputs))
            in_dims = _dims(inputs[0].shape)
            if len(inputs) != 1 or len(in_dims) != 4 or in_dims[1] not in (None, 3):
                raise ValueError("expected one [1, 3, H, W] input")
            n = len(self.strides)
            for j, out in enumerate(outputs):
                dims = _dims(out.shape)
                want = (1, 4, 10)[j // n]
                if len(dims) not in (2, 3) or dims[-1] not in (None, want):
                    raise ValueError(f"output {j} ({out.name}) should be [N, {want}]")
        except ValueError as exc:
            raise InsightFaceModelError(f"{path}: not an SCRFD detector like {DETECTOR_FILE} ({exc}); "
                                        f"{_signature(self.session)}") from None
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in outputs]
        # A fixed input size in the model wins over det_size, as in InsightFace.
        h, w = in_dims[2], in_dims[3]
        self.input_size = (w, h) if h and w else tuple(det_size)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.rgb_as_bgr = rgb_as_bgr

    def detect_frame(self, frame: np.ndarray) -> np.ndarray:
        _check_frame(frame)
        image, scale = letterbox(np.ascontiguousarray(frame), self.input_size)
        blob = _network_input(image[None], SCRFD_MEAN, SCRFD_STD, self.rgb_as_bgr)
        outs = [o[0] if o.ndim == 3 else o for o in self.session.run(self.output_names, {self.input_name: blob})]
        n = len(self.strides)
        boxes, scores, kps = decode_scrfd(outs[:n], outs[n:2 * n], outs[2 * n:] if self.use_kps else None,
                                          self.input_size, self.strides, self.num_anchors, self.score_threshold)
        keep = nms(boxes, scores, self.nms_threshold)
        rows = [boxes[keep] / scale, scores[keep, None]]
        if kps is not None:
            rows.append(kps[keep].reshape(len(keep), kps.shape[1] * 2) / scale)
        return np.concatenate(rows, 1).astype(np.float32)

    def detect(self, frames: Sequence[np.ndarray]) -> List[np.ndarray]:
        return [self.detect_frame(f) for f in frames]


# --------------------------------------------------------------------------- 106 landmarks


def landmark_crop_transform(box: Box, size: int = 192) -> np.ndarray:
    """[2, 3] affine from the frame into the landmark model's ``size`` x ``size`` crop: the box
    centre goes to (size / 2, size / 2), scale size / (1.5 * the longer box side), no rotation."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    scale = size / (max(x2 - x1, y2 - y1) * LANDMARK_CROP_MARGIN)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return np.array([[scale, 0.0, size / 2 - cx * scale], [0.0, scale, size / 2 - cy * scale]])


class Landmark106:
    """InsightFace's 106-point landmark model (``2d106det.onnx``), batched over faces."""

    def __init__(self, path: str, providers: Providers = None, rgb_as_bgr: bool = False,
                 batch_size: int = 16) -> None:
        self.path = path
        self.session = load_session(path, providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        in_dims = _dims(inputs[0].shape) if inputs else []
        out_dims = _dims(outputs[0].shape) if outputs else []
        if (len(inputs) != 1 or len(in_dims) != 4 or in_dims[1] != 3 or in_dims[2] is None
                or in_dims[2] != in_dims[3] or len(outputs) != 1 or len(out_dims) != 2
                or out_dims[1] != 2 * NUM_LANDMARKS):
            raise InsightFaceModelError(
                f"{path}: not a 106-point landmark model like {LANDMARK_FILE} (expected one "
                f"[B, 3, S, S] input and one [B, {2 * NUM_LANDMARKS}] output); {_signature(self.session)}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.size = in_dims[2]
        # A fixed batch of 1 means one crop per run.
        self.batch_size = 1 if in_dims[0] == 1 else batch_size
        self.rgb_as_bgr = rgb_as_bgr

    def landmarks(self, frames: Sequence[np.ndarray], boxes: Sequence[Box]) -> List[np.ndarray]:
        """One [106, 2] float32 array per (frame, box) pair."""
        results: List[np.ndarray] = []
        for pairs in face_batches(frames, boxes, self.batch_size):
            crops, transforms = [], []
            for frame, box in pairs:
                _check_frame(frame)
                m = landmark_crop_transform(box, self.size)
                crops.append(cv2.warpAffine(np.ascontiguousarray(frame), m, (self.size, self.size), borderValue=0.0))
                transforms.append(m)
            blob = _network_input(np.stack(crops), LANDMARK_MEAN, LANDMARK_STD, self.rgb_as_bgr)
            pred = self.session.run([self.output_name], {self.input_name: blob})[0]
            for p, m in zip(np.asarray(pred, dtype=np.float64).reshape(len(pairs), NUM_LANDMARKS, 2), transforms):
                crop_xy = (p + 1.0) * (self.size // 2)
                inverse = cv2.invertAffineTransform(m)
                results.append((crop_xy @ inverse[:, :2].T + inverse[:, 2]).astype(np.float32))
        return results


# --------------------------------------------------------------------------- face choice + landmarker


def latentsync_face_choice(detections: np.ndarray, threshold: float = 0.5) -> Optional[int]:
    """Index of the face LatentSync keeps, or None: the largest box (integer-truncated) that is at
    least 50 px wide and 80 px high, has width / height in [0.2, 1.5] and score >= ``threshold``;
    the first such box on ties."""
    dets = np.asarray(detections, dtype=np.float64)
    if dets.size == 0:
        return None
    best, best_area = None, 0
    for i, row in enumerate(dets.reshape(-1, dets.shape[-1])):
        x1, y1, x2, y2 = (int(v) for v in row[:4])
        w, h = x2 - x1, y2 - y1
        if w < 50 or h < 80 or not 0.2 <= w / h <= 1.5 or row[4] < threshold:
            continue
        if w * h > best_area:
            best, best_area = i, w * h
    return best


class InsightFaceLandmarker:
    """106 landmarks for one face box per frame, with the box refined by SCRFD.

    Each frame is run through the detector; the landmark crop uses the detection that overlaps the
    given box most (``choice="iou"``), or LatentSync's own pick, the largest plausible face
    (``choice="latentsync"``). Without such a detection the given box is used. Same interface as
    the landmarkers in ``models.landmarks``.
    """

    def __init__(self, detector: SCRFDDetector, landmark_model: Landmark106, choice: str = "iou",
                 min_iou: float = 0.0) -> None:
        if choice not in ("iou", "latentsync"):
            raise ValueError(f"choice must be 'iou' or 'latentsync', got {choice!r}")
        self.detector = detector
        self.landmark_model = landmark_model
        self.choice = choice
        self.min_iou = min_iou
        self.source = f"{detector.path} + {landmark_model.path}"

    @classmethod
    def from_files(cls, detector_path: str, landmark_path: str, providers: Providers = None,
                   det_size: Tuple[int, int] = LATENTSYNC_DET_SIZE, rgb_as_bgr: bool = False,
                   **kwargs) -> "InsightFaceLandmarker":
        """From ``det_10g.onnx`` and ``2d106det.onnx`` (found as ``INSIGHTFACE_FILES``)."""
        detector = SCRFDDetector(detector_path, det_size=det_size, providers=providers, rgb_as_bgr=rgb_as_bgr)
        model = Landmark106(landmark_path, providers=providers, rgb_as_bgr=rgb_as_bgr)
        return cls(detector, model, **kwargs)

    def select_boxes(self, frames: Sequence[np.ndarray], boxes: Sequence[Box]) -> List[Tuple[np.ndarray, bool]]:
        """Per frame, the box the landmarks are taken in and whether it came from the detector."""
        if len(frames) != len(boxes):
            raise ValueError(f"got {len(frames)} frames but {len(boxes)} boxes")
        chosen = []
        for dets, box in zip(self.detector.detect(frames), boxes):
            given = np.asarray(box, dtype=np.float64)[:4]
            pick = None
            if len(dets) and self.choice == "latentsync":
                pick = latentsync_face_choice(dets)
            elif len(dets):
                overlap = box_iou(given, dets[:, :4])
                best = int(np.argmax(overlap))
                pick = best if overlap[best] > self.min_iou else None
            chosen.append((given, False) if pick is None else (dets[pick, :4].astype(np.float64), True))
        return chosen

    def landmarks(self, frames: Sequence[np.ndarray], boxes: Sequence[Box]) -> List[np.ndarray]:
        """One [106, 2] float32 array per (frame, box) pair."""
        chosen = self.select_boxes(frames, boxes)
        return self.landmark_model.landmarks(frames, [b for b, _ in chosen])
