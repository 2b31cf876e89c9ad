"""MuseTalk v1.5 face crop and paste-back blending (numpy / OpenCV, RGB uint8 frames).

Boxes are ``(x1, y1, x2, y2)`` integer pixel edges, ``x2``/``y2`` exclusive, as in
``frame[y1:y2, x1:x2]``.

Per frame the flow is::

    det_box, _ = landmark_box(lm68, det_box)          # v1.5: the box from 68 landmarks
    box = face_box(det_box, frame.shape)              # v1.5: 10 px added below
    face = crop_face(frame, box)                      # 256 x 256 model input
    crop_box = expanded_crop_box(box, frame.shape)    # square, 1.5 x the larger side
    parsing = parser.parse([crop_padded(frame, crop_box)])[0]
    mask = blend_mask(parsing, box, crop_box)         # or reuse_mask(...) between parses
    out = paste_face(frame, generated_face, box, crop_box, mask)
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]

# CelebAMask-HQ labels used by the blend regions.
SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP, NECK = 1, 10, 11, 12, 13, 14
RAW_CLASSES = (SKIN, MOUTH, UPPER_LIP, LOWER_LIP)
NECK_CLASSES = RAW_CLASSES + (NECK,)
LIP_CLASSES = (MOUTH, UPPER_LIP, LOWER_LIP)
MODES = ("jaw", "raw", "neck")

PARSE_SIZE = 512  # the region rules below are in pixels of the 512 x 512 parsing map
FACE_SIZE = 256


# 33 x 33 structuring element: an upward-pointing cone (rows 10..20) over a 21-wide bar.
# OpenCV's dilate reflects the element, so skin grows 16 px up, 10 px sideways and only
# 6 px down, narrowing to a point (a cone under the jaw line).
_rows, _cols = np.mgrid[:33, :33]
_JAW_KERNEL = ((_rows >= 10) & (np.abs(_cols - 16) <= np.minimum(_rows - 10, 10))).astype(np.uint8)
# A flat ellipse: erodes the cheek sides horizontally (17 px per pass) and barely vertically.
_CHEEK_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))


def _cheek_sides(left_width: int, right_width: int) -> np.ndarray:
    """True on the cheek sides of the 512 map: columns <= 256 - left or >= 256 + right."""
    cols = np.arange(PARSE_SIZE)
    centre = PARSE_SIZE // 2
    side = (cols <= centre - left_width) | (cols >= centre + right_width)
    return np.broadcast_to(side, (PARSE_SIZE, PARSE_SIZE))


def parsing_region(parsing: np.ndarray, mode: str = "jaw", left_cheek_width: int = 90,
                   right_cheek_width: int = 90) -> np.ndarray:
    """Blend region (uint8 0/255, 512 x 512) from a class map of the expanded crop.

    raw: skin, mouth and lips. neck: raw plus neck. jaw (v1.5 default): skin dilated with
    the jaw kernel, eroded on the cheek sides (beyond ``*_cheek_width`` px from the map
    centre), nose removed, mouth and lips added.
    """
    if mode not in MODES:
        raise ValueError(f"blend mode must be one of {MODES}, got {mode!r}")
    parsing = np.asarray(parsing)
    if parsing.ndim != 2 or parsing.size == 0:
        raise ValueError(f"parsing map must be a 2-D class map, got shape {parsing.shape}")
    if parsing.shape != (PARSE_SIZE, PARSE_SIZE):
        parsing = cv2.resize(parsing.astype(np.uint8), (PARSE_SIZE, PARSE_SIZE),
                             interpolation=cv2.INTER_NEAREST)
    if mode != "jaw":
        region = np.isin(parsing, RAW_CLASSES if mode == "raw" else NECK_CLASSES)
    else:
        skin = (parsing == SKIN).astype(np.uint8) * 255
        dilated = cv2.dilate(skin, _JAW_KERNEL, iterations=1)
        eroded = cv2.erode(dilated, _CHEEK_KERNEL, iterations=2)
        sides = _cheek_sides(left_cheek_width, right_cheek_width)
        grown = np.where(sides, eroded, dilated) == 255
        region = (grown & (parsing != NOSE)) | np.isin(parsing, LIP_CLASSES)
    return region.astype(np.uint8) * 255


# ---------------------------------------------------------------- boxes and crops


def _frame_hw(frame_shape: Sequence[int]) -> tuple[int, int]:
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"frame shape must be at least 1 x 1, got {tuple(frame_shape)}")
    return h, w


def face_box(det_box: Sequence[float], frame_shape: Sequence[int], extra_margin: int = 10) -> Box:
    """v1.5 face box: integer detector box, ``y2 += extra_margin``, clamped to the frame.

    Coordinates are truncated like upstream's ``int()`` on non-negative values. The result
    is at least 1 x 1 and inside the frame. Raises ValueError for a box that misses the frame.
    """
    h, w = _frame_hw(frame_shape)
    vals = np.asarray(det_box, dtype=np.float64).reshape(-1)[:4]
    if vals.size != 4 or not np.all(np.isfinite(vals)):
        raise ValueError(f"face box must be 4 finite numbers (x1, y1, x2, y2), got {det_box!r}")
    x1, y1, x2, y2 = (int(np.floor(v)) for v in vals)
    y2 += int(extra_margin)
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h or x2 <= x1 or y2 <= y1:
        raise ValueError(f"face box {tuple(vals.tolist())} (+{extra_margin} px below) "
                         f"does not overlap the {w}x{h} frame")
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(w, x2), min(h, y2)
    return x1, y1, x2, y2


NOSE_POINT = 29   # 68-point index of the nose point that upstream puts on the crop's middle row


def landmark_box(landmarks: np.ndarray, det_box: Sequence[float]) -> tuple[tuple[float, ...], bool]:
    """MuseTalk v1.5's face box from 68 landmarks, before ``extra_margin``.

    Upstream casts the points to integers (truncation), then: x from the points' min and max
    x, bottom = the lowest point (the chin), top = point 29's y minus (bottom - point 29's y),
    so the nose point lands on the crop's middle row, where the VAE mask cuts. An empty box
    or one with x1 < 0 is invalid: the detector box is used instead. Returns
    ``(box, from_landmarks)``; feed ``box`` to ``face_box``.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks of shape (68, 2), got {pts.shape}")
    if np.all(np.isfinite(pts)):
        pts = pts.astype(np.int64)          # upstream: landmarks.astype(np.int32), i.e. truncation
        nose_y = int(pts[NOSE_POINT, 1])
        x1, x2 = int(pts[:, 0].min()), int(pts[:, 0].max())
        y2 = int(pts[:, 1].max())
        y1 = nose_y - (y2 - nose_y)
        if y2 - y1 > 0 and x2 - x1 > 0 and x1 >= 0:
            return (float(x1), float(y1), float(x2), float(y2)), True
    return tuple(float(v) for v in np.asarray(det_box, np.float64)[:4]), False


def _check_box(box: Sequence[int], frame_shape: Sequence[int]) -> Box:
    h, w = _frame_hw(frame_shape)
    x1, y1, x2, y2 = (int(v) for v in box)
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ValueError(f"face box {tuple(box)} must be non-empty and inside the {w}x{h} frame "
                         f"(use face_box() to clamp a detector box)")
    return x1, y1, x2, y2


def crop_face(frame: np.ndarray, box: Sequence[int], size: int = FACE_SIZE) -> np.ndarray:
    """``frame[y1:y2, x1:x2]`` resized to ``size`` x ``size`` (Lanczos, aspect not kept)."""
    x1, y1, x2, y2 = _check_box(box, frame.shape)
    return cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LANCZOS4)


def expanded_crop_box(box: Sequence[int], frame_shape: Sequence[int], expand: float = 1.5) -> Box:
    """Square paste-back region centred on the box, side ``2 * int(max(w, h) // 2 * expand)``.

    Not clamped to the frame (as upstream, the parser sees black beyond the edge);
    ``frame_shape`` is only used to check the box. Tiny boxes get a square that still
    covers them.
    """
    x1, y1, x2, y2 = _check_box(box, frame_shape)
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    s = max(s, 1, xc - x1, x2 - xc, yc - y1, y2 - yc)
    return xc - s, yc - s, xc + s, yc + s


def crop_padded(frame: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    """``frame`` cut to ``crop_box``; parts outside the frame are black (PIL ``crop`` rule)."""
    xs, ys, xe, ye = (int(v) for v in crop_box)
    if xe <= xs or ye <= ys:
        raise ValueError(f"crop box {tuple(crop_box)} is empty")
    h, w = frame.shape[:2]
    out = np.zeros((ye - ys, xe - xs) + frame.shape[2:], dtype=frame.dtype)
    fx1, fy1, fx2, fy2 = max(xs, 0), max(ys, 0), min(xe, w), min(ye, h)
    if fx2 > fx1 and fy2 > fy1:
        out[fy1 - ys:fy2 - ys, fx1 - xs:fx2 - xs] = frame[fy1:fy2, fx1:fx2]
    return out


# ---------------------------------------------------------------- masks


def blur_kernel_size(crop_width: int, blur_ratio: float = 0.05) -> int:
    """Upstream's odd Gaussian kernel: ``int(ratio * width // 2 * 2) + 1`` (5% offline, 10% realtime)."""
    return int(blur_ratio * crop_width // 2 * 2) + 1


def _fallback_region(box: Box, crop_box: Box, upper_boundary_ratio: float) -> np.ndarray:
    """Ellipse standing in for the parsing region (see ``blend_mask``): the cut line is the
    box's vertical centre by default, and the box bottom the chin plus the v1.5 margin."""
    xs, ys, xe, ye = crop_box
    region = np.zeros((ye - ys, xe - xs), np.uint8)
    x1, y1, x2, y2 = box
    cx = (x1 + x2) / 2.0 - xs
    top = int((ye - ys) * upper_boundary_ratio)
    axes = (max(1, int(round(0.45 * (x2 - x1)))), max(1, (y2 - ys) - top))
    cv2.ellipse(region, (int(round(cx)), top), axes, 0, 0, 360, 255, thickness=-1)
    return region


def blend_mask(parsing: np.ndarray | None, box: Sequence[int], crop_box: Sequence[int],
               mode: str = "jaw", *, upper_boundary_ratio: float = 0.5, blur_ratio: float = 0.05,
               left_cheek_width: int = 90, right_cheek_width: int = 90) -> np.ndarray:
    """Feathered paste-back mask (float32 in [0, 1], crop_box's size) as in MuseTalk v1.5.

    The parsing region (512 map of the crop) is resized to the crop, kept only inside the
    face box and only below ``upper_boundary_ratio`` of the crop height, then Gaussian
    blurred (kernel ``blur_kernel_size(crop width, blur_ratio)``).

    ``parsing=None`` (no parser): the region is an ellipse centred on the box's centre
    column at the cut line, 90% of the box width across, reaching down to the box bottom;
    after the cut that is a lower-face half-ellipse, feathered the same way.
    """
    xs, ys, xe, ye = (int(v) for v in crop_box)
    x1, y1, x2, y2 = (int(v) for v in box)
    cw, ch = xe - xs, ye - ys
    if cw < 1 or ch < 1 or x2 <= x1 or y2 <= y1:
        raise ValueError(f"blend_mask: empty box {tuple(box)} or crop box {tuple(crop_box)}")
    if parsing is None:
        region = _fallback_region((x1, y1, x2, y2), (xs, ys, xe, ye), upper_boundary_ratio)
    else:
        region = parsing_region(parsing, mode, left_cheek_width, right_cheek_width)
        # Upstream resizes the 0/255 region with PIL's default (bicubic); the blur follows.
        interp = cv2.INTER_CUBIC if cw >= PARSE_SIZE else cv2.INTER_AREA
        region = cv2.resize(region, (cw, ch), interpolation=interp)

    keep = np.zeros((ch, cw), np.float32)
    top = max(y1 - ys, int(ch * upper_boundary_ratio), 0)
    bottom, left, right = min(y2 - ys, ch), max(x1 - xs, 0), min(x2 - xs, cw)
    if bottom > top and right > left:
        keep[top:bottom, left:right] = region[top:bottom, left:right]
    k = blur_kernel_size(cw, blur_ratio)
    if k > 1:
        keep = cv2.GaussianBlur(keep, (k, k), 0)
    return _snap(keep / 255.0)


def _check_mask(mask: np.ndarray, crop_box: Box, who: str, what: str = "the") -> None:
    xs, ys, xe, ye = crop_box
    if mask.shape != (ye - ys, xe - xs):
        raise ValueError(f"{who}: mask shape {mask.shape} does not match {what} crop box "
                         f"{tuple(crop_box)} ({ye - ys} x {xe - xs})")


def _snap(mask: np.ndarray) -> np.ndarray:
    # Values an 8-bit mask (upstream's) would store as 0 or 255 become exactly 0 or 1.
    mask = np.clip(mask, 0.0, 1.0).astype(np.float32, copy=False)
    mask[mask < 0.5 / 255] = 0.0
    mask[mask > 1.0 - 0.5 / 255] = 1.0
    return mask


def reuse_mask(mask: np.ndarray, old_box: Sequence[int], old_crop_box: Sequence[int],
               new_box: Sequence[int], new_crop_box: Sequence[int]) -> np.ndarray:
    """Carry a mask made for one frame over to a nearby frame whose face box moved.

    The mask is warped by the map that takes the old face box onto the new one (separate x
    and y scale plus a shift) and resampled onto ``new_crop_box``; areas it does not cover
    are 0. For ``parse_every: N`` between two parses.
    """
    oxs, oys, oxe, oye = (int(v) for v in old_crop_box)
    nxs, nys, nxe, nye = (int(v) for v in new_crop_box)
    _check_mask(mask, (oxs, oys, oxe, oye), "reuse_mask", "old")
    ox1, oy1, ox2, oy2 = (int(v) for v in old_box)
    nx1, ny1, nx2, ny2 = (int(v) for v in new_box)
    if ox2 <= ox1 or oy2 <= oy1 or nx2 <= nx1 or ny2 <= ny1 or nxe <= nxs or nye <= nys:
        raise ValueError(f"reuse_mask: empty box in {tuple(old_box)} -> {tuple(new_box)}")
    if (tuple(old_box) == tuple(new_box)) and (tuple(old_crop_box) == tuple(new_crop_box)):
        return mask.astype(np.float32, copy=True)
    sx = (nx2 - nx1) / (ox2 - ox1)
    sy = (ny2 - ny1) / (oy2 - oy1)
    # Pixel centres: old crop index a sits at frame edge coordinate oxs + a + 0.5.
    tx = nx1 + (oxs + 0.5 - ox1) * sx - nxs - 0.5
    ty = ny1 + (oys + 0.5 - oy1) * sy - nys - 0.5
    m = np.array([[sx, 0.0, tx], [0.0, sy, ty]], np.float64)
    out = cv2.warpAffine(mask.astype(np.float32, copy=False), m, (nxe - nxs, nye - nys),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return _snap(out)


# ---------------------------------------------------------------- paste-back


def paste_face(frame: np.ndarray, face_256: np.ndarray, box: Sequence[int],
               crop_box: Sequence[int], mask: np.ndarray) -> np.ndarray:
    """New frame with the generated face resized into ``box`` and blended through ``mask``.

    ``mask`` covers ``crop_box``. Only pixels inside box, crop box and frame can change
    (elsewhere the composite source equals the frame), and mask 0 keeps the frame's pixel.
    """
    x1, y1, x2, y2 = _check_box(box, frame.shape)
    xs, ys, xe, ye = (int(v) for v in crop_box)
    _check_mask(mask, (xs, ys, xe, ye), "paste_face")
    if face_256.ndim != 3 or face_256.shape[2] != frame.shape[2] or face_256.dtype != frame.dtype:
        raise ValueError(f"paste_face: face must be {frame.dtype} HxWx{frame.shape[2]}, "
                         f"got {face_256.dtype} {face_256.shape}")
    # Upstream resizes the decoded face with OpenCV's default (bilinear).
    face = cv2.resize(face_256, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    out = frame.copy()
    ax1, ay1, ax2, ay2 = max(x1, xs), max(y1, ys), min(x2, xe), min(y2, ye)
    if ax2 <= ax1 or ay2 <= ay1:
        return out
    m = mask[ay1 - ys:ay2 - ys, ax1 - xs:ax2 - xs, None]
    under = frame[ay1:ay2, ax1:ax2].astype(np.float32)
    over = face[ay1 - y1:ay2 - y1, ax1 - x1:ax2 - x1].astype(np.float32)
    blended = np.rint(under + m * (over - under))
    out[ay1:ay2, ax1:ax2] = np.clip(blended, 0, 255).astype(frame.dtype)
    return out
