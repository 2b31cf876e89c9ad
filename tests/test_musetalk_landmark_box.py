"""MuseTalk v1.5's face box from 68 landmarks (the crop the VAE mask cuts at the nose), the
detector box where it is invalid, and the face_crop stage that applies it."""
import numpy as np
import pytest

from lipgraph.graph.items import Item
from lipgraph.graph.stage import StageContext
from lipgraph.models.landmarks import box_landmarks
from lipgraph.stages.face_crop import FaceCrop
from lipgraph.vision.musetalk_face import crop_face, face_box, landmark_box


def upstream_rule(lm, det):
    """The rule as MuseTalk v1.5's preprocessing states it, written out independently."""
    pts = lm.astype(np.int32)
    nose = pts[29]
    half_face = np.max(pts[:, 1]) - nose[1]
    top = nose[1] - half_face
    x1, y1, x2, y2 = np.min(pts[:, 0]), int(top), np.max(pts[:, 0]), np.max(pts[:, 1])
    if y2 - y1 <= 0 or x2 - x1 <= 0 or x1 < 0:
        return tuple(float(v) for v in det)
    return float(x1), float(y1), float(x2), float(y2)


def random_faces(n, seed=0):
    """68-point sets of plausible faces: the mean face in random boxes, jittered and tilted."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x1, y1 = rng.uniform(5, 400, 2)
        w, h = rng.uniform(40, 300, 2)
        lm = box_landmarks((x1, y1, x1 + w, y1 + h)).astype(np.float64)
        angle = rng.uniform(-0.3, 0.3)
        c = lm.mean(0)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        lm = (lm - c) @ rot.T + c + rng.normal(0, 2.0, lm.shape)
        yield lm, (x1, y1, x1 + w, y1 + h)


def test_box_equals_upstream_rule_on_random_landmark_sets():
    for lm, det in random_faces(200):
        box, from_lm = landmark_box(lm, det)
        assert box == upstream_rule(lm, det)
        assert from_lm == (box != tuple(float(v) for v in det))


def test_nose_point_lands_on_the_crops_middle_row():
    frame_shape = (720, 1280, 3)
    for lm, det in random_faces(50, seed=1):
        box, from_lm = landmark_box(lm, det)
        assert from_lm
        x1, y1, x2, y2 = face_box(box, frame_shape, extra_margin=0)
        if y1 == 0:
            continue                   # clamped at the frame's top edge (upstream would crash)
        nose_y = int(lm[29, 1])        # the truncated point upstream uses
        assert (nose_y - y1) * 256 / (y2 - y1) == 128
        # with v1.5's margin the cut moves below the nose by the margin's share, as upstream
        x1, y1, x2, y2 = face_box(box, frame_shape, extra_margin=10)
        assert (nose_y - y1) * 256 / (y2 - y1) < 128


def test_a_crop_made_from_landmarks_has_the_nose_at_the_mask_line():
    frame = np.zeros((400, 400, 3), np.uint8)
    lm = box_landmarks((100, 80, 300, 320)).astype(np.float64)
    box, _ = landmark_box(lm, (0, 0, 1, 1))
    crop = face_box(box, frame.shape, extra_margin=0)
    x, y = int(lm[29, 0]), int(lm[29, 1])
    frame[y, x] = 255                      # a marker at the nose point
    face = crop_face(frame, crop, 256)
    row = int(np.argmax(face[..., 0].max(axis=1)))
    assert abs(row - 128) <= 1             # Lanczos places it on the middle row (+-1 for rounding)


@pytest.mark.parametrize("case", ["left_of_frame", "empty", "upside_down", "not_finite"])
def test_invalid_landmark_boxes_fall_back_to_the_detector(case):
    det = (50.0, 60.0, 150.0, 200.0)
    lm = box_landmarks(det).astype(np.float64)
    if case == "left_of_frame":
        lm[:, 0] -= 120                    # x1 < 0
    elif case == "empty":
        lm[:] = lm[29]                     # every point on the nose: zero width and height
    elif case == "upside_down":
        lm[:, 1] = 2 * lm[29, 1] - lm[:, 1]  # the nose below everything: bottom == nose
        lm[29, 1] = lm[:, 1].max()
    else:
        lm[5] = np.nan
    box, from_lm = landmark_box(lm, det)
    assert box == det and not from_lm
    if case != "not_finite":
        assert box == upstream_rule(lm, det)


class Counter(StageContext):
    def __init__(self):
        self.counts = {}

    def count(self, key, amount=1, reason=None):
        self.counts[key] = self.counts.get(key, 0) + amount


def _crop_stage(box="landmarks"):
    ctx = Counter()
    stage = FaceCrop("crop", {"enabled": "yes", "box": box}, ctx)
    stage.open()
    return stage, ctx


def test_face_crop_stage_uses_landmarks_then_the_margin():
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    det = np.array([200, 100, 400, 340, 0.9], np.float32)
    lm = box_landmarks((210, 90, 390, 360)).astype(np.float32)
    stage, ctx = _crop_stage()
    (_, out), = stage.process(Item(0, {"frame": frame, "box": det, "lm68": lm}), "in")
    x1, y1, x2, y2 = upstream_rule(lm, det[:4])
    assert tuple(out.data["face_box"]) == (x1, y1, x2, min(y2 + 10, 480))
    assert out.data["crop"].shape == (256, 256, 3)
    assert ctx.counts == {"box_from_landmarks": 1}

    # no landmarks (no FAN weights): the detector box, as before
    (_, out), = stage.process(Item(1, {"frame": frame, "box": det}), "in")
    assert tuple(out.data["face_box"]) == (200, 100, 400, 350)
    # invalid landmarks: the detector box, counted
    bad = lm.copy()
    bad[:, 0] -= 300
    (_, out), = stage.process(Item(2, {"frame": frame, "box": det, "lm68": bad}), "in")
    assert tuple(out.data["face_box"]) == (200, 100, 400, 350)
    assert ctx.counts == {"box_from_landmarks": 1, "box_from_detector": 1}

    # box: detector ignores landmarks
    stage, _ = _crop_stage("detector")
    (_, out), = stage.process(Item(3, {"frame": frame, "box": det, "lm68": lm}), "in")
    assert tuple(out.data["face_box"]) == (200, 100, 400, 350)


def test_face_crop_keeps_a_cached_face_box():
    frame = np.zeros((100, 100, 3), np.uint8)
    stage, _ = _crop_stage()
    item = Item(0, {"frame": frame, "box": np.array([10, 10, 60, 60, 1.0], np.float32),
                    "face_box": np.array([12, 8, 58, 70], np.int32)})
    (_, out), = stage.process(item, "in")
    assert tuple(out.data["face_box"]) == (12, 8, 58, 70)
