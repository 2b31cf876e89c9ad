"""face_landmarks -> face_crop -> face_align: one landmark pass per face frame serves
MuseTalk's box and LatentSync's alignment; LatentSync 1.6 aligns with InsightFace's 106 points
(tiny ONNX models built here with the real files' signatures); missing files are named."""
import cv2
import numpy as np
import pytest

from lipgraph.graph.items import Item
from lipgraph.graph.stage import StageContext
from lipgraph.models.landmarks import box_landmarks
from lipgraph.stages.face_align import FaceAlign
from lipgraph.stages.face_crop import FaceCrop
from lipgraph.stages.face_landmarks import FaceLandmarks
from lipgraph.vision.latentsync_align import AlignmentSmoother, align_face, estimate_affine, estimate_affine_106
from lipgraph.vision.musetalk_face import face_box, landmark_box


class Ctx(StageContext):
    def __init__(self):
        self.warnings, self.counts = [], {}

    def warn(self, message):
        self.warnings.append(message)

    def count(self, key, amount=1, reason=None):
        self.counts[key] = self.counts.get(key, 0) + amount


class FakeFAN:
    """68 points placed in each box; records which frames it was asked about."""
    def __init__(self):
        self.asked = []

    def landmarks(self, frames, boxes):
        self.asked += [int(f[0, 0, 0]) for f in frames]
        return [box_landmarks(b) + 3.0 for b in boxes]


def frames_with_cutaway(n=10, cut=(4, 5)):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        frame = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        frame[0, 0, 0] = i
        box = None if i in cut else np.array([100 + i, 60, 200 + i, 180, 0.9], np.float32)
        items.append(Item(i, {"frame": frame, "box": box}))
    return items


def run(stage, items):
    out = []
    for it in items:
        out += [m for _, m in stage.process(it, "in")]
    out += [m for _, m in stage.finish()]
    return out


def test_one_landmark_pass_serves_the_crop_and_the_alignment(tmp_path):
    ctx = Ctx()
    lmk = FaceLandmarks("landmarks", {"sets": "68", "weights": str(tmp_path), "batch_size": 3,
                                      "device": "cpu"}, ctx)
    lmk.open()
    assert lmk.fan is None and any("FAN" in w and "2DFAN4" in w for w in ctx.warnings)
    lmk.fan, lmk.on = FakeFAN(), True
    crop = FaceCrop("crop", {"enabled": "yes"}, Ctx())
    align = FaceAlign("align", {"enabled": "yes", "resolution": 256}, Ctx())
    crop.open()
    align.open()
    items = run(lmk, frames_with_cutaway())
    assert [it.index for it in items] == list(range(10))
    assert sorted(lmk.fan.asked) == [0, 1, 2, 3, 6, 7, 8, 9]        # each face frame once
    items = [m for it in items for _, m in crop.process(it, "in")]
    items = [m for it in items for _, m in align.process(it, "in")]
    smoother = AlignmentSmoother()
    for it in items:
        d = it.data
        if d["box"] is None:
            assert "lm68" not in d and "aligned" not in d and "face_box" not in d
            smoother.reset()
            continue
        lm = box_landmarks(d["box"][:4]) + 3.0
        np.testing.assert_array_equal(d["lm68"], lm)
        box, from_lm = landmark_box(lm, d["box"][:4])
        assert from_lm and tuple(d["face_box"]) == face_box(box, d["frame"].shape, 10)
        np.testing.assert_allclose(d["affine"], estimate_affine(lm, 256, smoother))
        assert d["align"] == "fan"


def test_cached_frames_are_not_looked_at_again():
    lmk = FaceLandmarks("landmarks", {"sets": "68", "device": "cpu"}, Ctx())
    lmk.open()
    lmk.fan, lmk.on = FakeFAN(), True
    items = frames_with_cutaway(4, cut=())
    items[1].data["face_box"] = np.array([1, 2, 3, 4], np.int32)
    run(lmk, items)
    assert sorted(lmk.fan.asked) == [0, 2, 3]


def test_missing_insightface_files_fall_back_to_fan_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ctx = Ctx()
    lmk = FaceLandmarks("landmarks", {"sets": "106", "weights": str(tmp_path), "device": "cpu"}, ctx)
    lmk.open()
    assert lmk.lm106 is None
    assert any("det_10g.onnx and 2d106det.onnx not found" in w for w in ctx.warnings)
    assert any("buffalo_l" in w for w in ctx.warnings)
    assert any("2DFAN4" in w for w in ctx.warnings)     # then FAN is looked for, and missing too


def test_latentsync_16_aligns_with_insightface_106_points(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from test_insightface import make_detector, make_landmark_model
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    pack = tmp_path / "checkpoints" / "auxiliary" / "models" / "buffalo_l"   # upstream's layout
    pack.mkdir(parents=True)
    make_detector(pack / "det_10g.onnx")
    pred = np.random.default_rng(3).uniform(-0.6, 0.6, 212)
    make_landmark_model(pack / "2d106det.onnx", bias=pred)
    ctx = Ctx()
    lmk = FaceLandmarks("landmarks", {"sets": "106", "weights": str(tmp_path), "device": "cpu"}, ctx)
    lmk.open()
    assert lmk.lm106 is not None and lmk.fan is None and not ctx.warnings
    align = FaceAlign("align", {"enabled": "yes", "resolution": 512}, Ctx())
    align.open()
    items = [m for it in run(lmk, frames_with_cutaway()) for _, m in align.process(it, "in")]
    smoother = AlignmentSmoother()
    faces = 0
    for it in items:
        d = it.data
        if d["box"] is None:
            smoother.reset()
            continue
        faces += 1
        assert d["lm106"].shape == (106, 2) and "lm68" not in d and d["align"] == "insightface"
        affine = estimate_affine_106(d["lm106"], 512, smoother)
        np.testing.assert_allclose(d["affine"], affine)
        expect = align_face(d["frame"], affine, 512, interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(d["aligned"], expect)
        # bilinear, not the 1.5 release's Lanczos
        assert not np.array_equal(d["aligned"], align_face(d["frame"], affine, 512))
    assert faces == 8
