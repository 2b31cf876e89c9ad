"""LatentSync face alignment and paste-back (the v1.5 conventions with 68-point landmarks, and
the 1.6 variant with InsightFace's 106-point landmarks).

Three points (brow centres and nose centre) are mapped by a similarity transform onto a fixed
template inside a 3:4 face box (210 x 280 px wide x high at 256, 420 x 560 at 512). The box is
then resized to a square, which stretches the face horizontally by 4/3; the models were trained
on faces prepared this way.

LatentSync 1.6 (InsightFace since April 2025) keeps the template and the box, and changes how the
three points are found (``three_points_106``), the normalisation behind the translation bias
(``estimate_affine_106``) and the warp (bilinear: ``align_face(interpolation=cv2.INTER_LINEAR)``).

Coordinates follow the pixel-index convention of ``cv2.warpAffine`` (pixel (i, j) has its centre at
x = j, y = i). An affine is a float64 [2, 3] matrix mapping frame coordinates into the face box.
"""

from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np

# Template in units of the 256 px setting (upstream writes it as [19-2, 30-10], [56+2, 30-10], [37.5, 45-5]).
_TEMPLATE_UNITS = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])
_BOX_UNITS = (75, 100)  # width, height before scaling
_UNIT_SCALE_256 = 2.8
FILL_VALUE = 127  # gray for pixels that fall outside the frame


def _unit_scale(resolution: int) -> float:
    return resolution / 256 * _UNIT_SCALE_256


def face_box_size(resolution: int = 256) -> Tuple[int, int]:
    """(width, height) of the face box: (210, 280) at 256, (420, 560) at 512."""
    s = _unit_scale(resolution)
    return int(_BOX_UNITS[0] * s), int(_BOX_UNITS[1] * s)


def template_points(resolution: int = 256) -> np.ndarray:
    """The three target points [3, 2] (left brow, right brow, nose) inside the face box."""
    return _TEMPLATE_UNITS * _unit_scale(resolution)


def three_points(landmarks: np.ndarray) -> np.ndarray:
    """[3, 2]: mean of brow points 17..21, of brow points 22..26, and of nose points 27..35."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks of shape (68, 2), got {pts.shape}")
    return np.stack([pts[17:22].mean(0), pts[22:27].mean(0), pts[27:36].mean(0)])


def three_points_106(landmarks106: np.ndarray, round_like_upstream: bool = True) -> np.ndarray:
    """[3, 2] from InsightFace's 106 landmarks: mean of brow points 43, 48, 49, 50, 51, mean of
    brow points 101..105 and mean of nose points 74, 77, 83, 86.

    Upstream rounds the landmarks to integers first and the three means again afterwards
    (``round_like_upstream``). The points go onto the same template, in the same 3:4 box, as the
    68-point path's (``template_points``, ``face_box_size``).
    """
    pts = np.asarray(landmarks106, dtype=np.float64)
    if pts.shape != (106, 2):
        raise ValueError(f"expected 106 landmarks of shape (106, 2), got {pts.shape}")
    if round_like_upstream:
        pts = np.round(pts)
    points = np.stack([pts[[43, 48, 49, 51, 50]].mean(0), pts[101:106].mean(0), pts[[74, 77, 83, 86]].mean(0)])
    return np.round(points) if round_like_upstream else points


def similarity_transform(src: np.ndarray, dst: np.ndarray, ddof: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Rotation + uniform scale + translation taking ``src`` points onto ``dst`` points.

    Upstream's convention (kept because the training data was aligned with it): both point sets
    are centred and divided by the standard deviation of all their coordinates; the rotation is
    the orthogonal Procrustes solution of the normalised sets (a reflection is never chosen); the
    scale is the ratio of the two standard deviations. Returns the [2, 3] matrix and the third
    point's residual in the normalised frame (dst - src, before rotation), which upstream adds to
    the translation (see ``AlignmentSmoother``). ``ddof`` is the standard deviation's delta
    degrees of freedom: 0 in v1.5 (numpy), 1 in 1.6 (torch), which shrinks the residual by
    sqrt(5 / 6) and leaves the matrix unchanged.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_std, dst_std = src_c.std(ddof=ddof), dst_c.std(ddof=ddof)
    if src_std < 1e-9 or dst_std < 1e-9:
        raise ValueError("degenerate points for a similarity transform: all points coincide")
    src_n, dst_n = src_c / src_std, dst_c / dst_std

    u, _, vt = np.linalg.svd(src_n.T @ dst_n)
    rot = vt.T @ u.T
    if np.linalg.det(rot) < 0:
        vt[-1] *= -1
        rot = vt.T @ u.T
    scaled = (dst_std / src_std) * rot
    shift = dst_mean - scaled @ src_mean
    matrix = np.concatenate([scaled, shift[:, None]], axis=1)
    return matrix, dst_n[2] - src_n[2]


class AlignmentSmoother:
    """Temporal smoothing of the alignment across consecutive frames of one shot.

    Two stages, both upstream's (v1.5):
    - landmarks: each point moves from its previous smoothed position towards the new one with
      weight 1 - exp(-d^2 / (face_width * landmark_alpha)); d is its displacement in pixels and
      face_width the x-extent of the new points. Jitter of a pixel or two is mostly suppressed,
      real motion passes through. ``landmark_alpha=None`` turns it off.
    - translation: the nose residual of ``similarity_transform`` is an exponential moving average
      (previous weight ``bias_keep``) and is added to the affine's translation. Upstream measures it
      in the normalised frame, so it is a sub-pixel to ~2 px shift.

    Call ``reset()`` at every cut, and use one smoother per face track.
    """

    def __init__(self, landmark_alpha: Optional[float] = 0.3, bias_keep: float = 0.2) -> None:
        self.landmark_alpha = landmark_alpha
        self.bias_keep = bias_keep
        self.reset()

    def reset(self) -> None:
        self._points: Optional[np.ndarray] = None
        self._bias: Optional[np.ndarray] = None

    def landmarks(self, points: np.ndarray) -> np.ndarray:
        """Smoothed copy of ``points`` [N, 2]; the first call after a reset returns them unchanged."""
        points = np.asarray(points, dtype=np.float64)
        if self.landmark_alpha is None or self._points is None or self._points.shape != points.shape:
            self._points = points.copy()
            return points.copy()
        width = max(float(points[:, 0].max() - points[:, 0].min()), 1e-6)
        dist2 = ((points - self._points) ** 2).sum(1, keepdims=True)
        keep = np.exp(-dist2 / (width * self.landmark_alpha))
        self._points = self._points * keep + points * (1.0 - keep)
        return self._points.copy()

    def bias(self, bias: np.ndarray) -> np.ndarray:
        """Moving average of the translation bias; the first call returns it unchanged."""
        bias = np.asarray(bias, dtype=np.float64)
        if self._bias is not None:
            bias = self._bias * self.bias_keep + bias * (1.0 - self.bias_keep)
        self._bias = bias
        return bias.copy()


def _affine(points: np.ndarray, resolution: int, smoother: Optional[AlignmentSmoother],
            ddof: int = 0) -> np.ndarray:
    matrix, bias = similarity_transform(points, template_points(resolution), ddof=ddof)
    if smoother is not None:
        bias = smoother.bias(bias)
    matrix[:, 2] += bias
    return matrix


def estimate_affine(
    landmarks: np.ndarray, resolution: int = 256, smoother: Optional[AlignmentSmoother] = None
) -> np.ndarray:
    """[2, 3] affine taking the frame into the face box, from 68 landmarks of one face.

    Without a smoother this equals upstream's result for the first frame of a video.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if smoother is not None:
        points = smoother.landmarks(points)
    return _affine(three_points(points), resolution, smoother)


def estimate_affine_106(
    landmarks106: np.ndarray, resolution: int = 256, smoother: Optional[AlignmentSmoother] = None
) -> np.ndarray:
    """[2, 3] affine into the face box from InsightFace's 106 landmarks, as LatentSync 1.6 does.

    Upstream does not smooth these landmarks; only the smoother's translation stage is used.
    Upstream also warps with this matrix cast to float16 (about 0.25 px steps in the
    translation); that rounding is not reproduced.
    """
    return _affine(three_points_106(landmarks106), resolution, smoother, ddof=1)


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        raise ValueError(f"expected an H x W x 3 image array, got shape {shape}")


def align_face(frame: np.ndarray, affine: np.ndarray, resolution: int = 256,
               interpolation: int = cv2.INTER_LANCZOS4) -> np.ndarray:
    """The aligned face, resolution x resolution x 3 uint8.

    Warp into the face box (gray 127 outside the frame), then Lanczos resize of the 3:4 box to a
    square. The warp is Lanczos in v1.5; 1.6 warps bilinearly (``cv2.INTER_LINEAR``).
    """
    _check_frame(frame)
    box_w, box_h = face_box_size(resolution)
    box = cv2.warpAffine(np.ascontiguousarray(frame), np.asarray(affine, dtype=np.float64),
                         (box_w, box_h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(FILL_VALUE,) * 3)
    return cv2.resize(box, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)


# Lanczos reaches 4 px, the mask's bilinear edge 1 px: a wider margin keeps the region-of-interest
# computation identical to a full-frame one.
_ROI_MARGIN = 8


def paste_region(inverse: np.ndarray, box_w: int, box_h: int, width: int, height: int):
    """Frame rectangle (x0, y0, x1, y1) that holds every pixel the face box can touch."""
    corners = np.array([[-0.5, -0.5], [box_w - 0.5, -0.5], [-0.5, box_h - 0.5], [box_w - 0.5, box_h - 0.5]])
    mapped = corners @ inverse[:, :2].T + inverse[:, 2]
    x0 = max(int(np.floor(mapped[:, 0].min())) - _ROI_MARGIN, 0)
    y0 = max(int(np.floor(mapped[:, 1].min())) - _ROI_MARGIN, 0)
    x1 = min(int(np.ceil(mapped[:, 0].max())) + _ROI_MARGIN + 1, width)
    y1 = min(int(np.ceil(mapped[:, 1].max())) + _ROI_MARGIN + 1, height)
    return x0, y0, x1, y1


def restore_face(frame: np.ndarray, face_res: np.ndarray, affine: np.ndarray, resolution: int = 256,
                 interpolation: int = cv2.INTER_LANCZOS4) -> np.ndarray:
    """Paste a (processed) aligned face back into a copy of ``frame``.

    The face is resized back to the 3:4 box, inverse-warped into the frame, and blended with
    upstream's soft edge (the inverse warp is Lanczos in v1.5, bilinear in 1.6: ``interpolation``):
    the warped box mask is eroded by 2 px, then eroded again by 2 * w and
    Gaussian-blurred with a (2w + 1) kernel, w = sqrt(face area in pixels) // 20. Pixels the box
    does not reach keep their exact values. Blending is rounded (upstream truncates).
    """
    _check_frame(frame)
    face_res = np.asarray(face_res)
    if face_res.shape != (resolution, resolution, 3):
        raise ValueError(f"expected a {resolution} x {resolution} x 3 face, got shape {face_res.shape}")
    height, width = frame.shape[:2]
    box_w, box_h = face_box_size(resolution)
    inverse = cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))

    x0, y0, x1, y1 = paste_region(inverse, box_w, box_h, width, height)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    # Warping straight into the region: shift the inverse map by the region's origin.
    inverse_roi = inverse.copy()
    inverse_roi[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)

    face_box = cv2.resize(face_res.astype(np.float32), (box_w, box_h), interpolation=cv2.INTER_LANCZOS4)
    warped = cv2.warpAffine(face_box, inverse_roi, size, flags=interpolation)
    box_mask = cv2.warpAffine(np.ones((box_h, box_w), np.float32), inverse_roi, size)

    box_mask = cv2.erode(box_mask, np.ones((2, 2), np.uint8))
    edge = int(float(box_mask.sum()) ** 0.5) // 20
    centre = cv2.erode(box_mask, np.ones((2 * edge, 2 * edge), np.uint8)) if edge > 0 else box_mask
    soft = cv2.GaussianBlur(centre, (2 * edge + 1, 2 * edge + 1), 0) if edge > 0 else centre

    region = frame[y0:y1, x0:x1].astype(np.float32)
    soft = soft[:, :, None]
    blended = soft * (box_mask[:, :, None] * warped) + (1.0 - soft) * region
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def mouth_region(affine: np.ndarray, keep: np.ndarray, width: int, height: int,
                 margin: int = 2) -> np.ndarray:
    """Frame pixels (bool H x W) the restored face may change beyond a resampling of the
    original: where the mask `keep` ([res, res], 1 = keep the original) is below 1, warped
    back into the frame like `restore_face` does, grown by `margin` pixels."""
    box_w, box_h = face_box_size(keep.shape[0])
    inverse = cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))
    redraw = cv2.resize((np.asarray(keep, np.float32) < 1).astype(np.float32), (box_w, box_h),
                        interpolation=cv2.INTER_LINEAR)
    region = cv2.warpAffine(redraw, inverse, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    if margin:
        kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
        region = cv2.dilate(region.astype(np.uint8), kernel) > 0
    return region
