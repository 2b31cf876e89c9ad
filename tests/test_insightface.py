"""InsightFace path: SCRFD decoding, the 106-point landmark crop, model files and signatures,
and LatentSync 1.6's anchor points. The ONNX models are tiny stand-ins built here with the same
input/output layout as det_10g.onnx and 2d106det.onnx."""

import math

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lipgraph.models.insightface import (  # noqa: E402
    InsightFaceLandmarker,
    InsightFaceModelError,
    Landmark106,
    SCRFDDetector,
    decode_scrfd,
    latentsync_face_choice,
)
from lipgraph.models.face_detection import nms  # noqa: E402
from lipgraph.models.weight_finder import find_weights  # noqa: E402
from lipgraph.vision import latentsync_align as la  # noqa: E402

DET_OUTPUTS = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]
STRIDES = (8, 16, 32)
DISTANCES = np.array([0.5, 0.25, 1.0, 1.5], np.float32)  # stride units
KPS = np.arange(1, 11, dtype=np.float32) / 10  # stride units


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _head(name, stride, channels, weight, bias, sigmoid=False):
    """Conv (kernel = stride = s) -> [1, 2C, h, w] -> [h * w * 2, C], as SCRFD lays anchors out."""
    w = numpy_helper.from_array(weight.astype(np.float32), f"{name}_w")
    b = numpy_helper.from_array(bias.astype(np.float32), f"{name}_b")
    shape = numpy_helper.from_array(np.array([-1, channels], np.int64), f"{name}_shape")
    nodes = [helper.make_node("Conv", ["input.1", w.name, b.name], [f"{name}_conv"],
                              kernel_shape=[stride, stride], strides=[stride, stride])]
    last = f"{name}_conv"
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", [last], [f"{name}_sig"]))
        last = f"{name}_sig"
    nodes += [helper.make_node("Transpose", [last], [f"{name}_t"], perm=[0, 2, 3, 1]),
              helper.make_node("Reshape", [f"{name}_t", shape.name], [name])]
    return nodes, [w, b, shape]


def make_detector(path, score_stride=32, gain=10.0, offset=-5.0, outputs=9, kps_dim=10):
    """det_10g-shaped model: the score at ``score_stride`` is sigmoid(gain * mean of channel 0 over
    the cell + offset), other strides never fire; box distances and keypoints are constants."""
    nodes, inits, outs = [], [], []
    heads = [("score", 1), ("box", 4), ("kps", kps_dim)][: outputs // 3]
    for group, (kind, c) in enumerate(heads):
        for i, s in enumerate(STRIDES):
            name = DET_OUTPUTS[group * 3 + i]
            weight = np.zeros((2 * c, 3, s, s))
            if kind == "score":
                bias = np.full(2, offset if s == score_stride else -20.0)
                if s == score_stride:
                    weight[:, 0] = gain / (s * s)
            else:
                bias = np.tile(DISTANCES if kind == "box" else KPS[:c], 2)
            n, i_ = _head(name, s, c, weight, bias, sigmoid=kind == "score")
            nodes += n
            inits += i_
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", c]))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])
    graph = helper.make_graph(nodes, "scrfd", [image], outs, inits)
    return _save(graph, path)


def make_landmark_model(path, weight=None, bias=None, out_dim=212, size=192):
    """2d106det-shaped model: output = Gemm(per-channel mean of the crop, weight, bias)."""
    weight = np.zeros((3, out_dim)) if weight is None else weight
    bias = np.zeros(out_dim) if bias is None else bias
    w = numpy_helper.from_array(weight.astype(np.float32), "w")
    b = numpy_helper.from_array(bias.astype(np.float32), "b")
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["fc1"])]
    image = helper.make_tensor_value_info("data", TensorProto.FLOAT, [None, 3, size, size])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [None, out_dim])
    graph = helper.make_graph(nodes, "lmk", [image], [out], [w, b])
    return _save(graph, path)


def red_square_frame():
    """320 x 240 frame, red square at x 160..239, y 80..159: letterboxed to 128 x 128 (scale 0.4)
    it fills exactly the stride-32 cell (2, 1)."""
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[80:160, 160:240] = (255, 0, 0)
    return frame


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------- SCRFD decode


def test_decode_scrfd_crafted_outputs():
    width, height = 64, 32
    counts = [(height // s) * (width // s) * 2 for s in STRIDES]  # 64, 16, 4
    scores = [np.zeros((n, 1), np.float32) for n in counts]
    dists = [np.zeros((n, 4), np.float32) for n in counts]
    kps = [np.zeros((n, 10), np.float32) for n in counts]
    # stride 16, cell x = 2, y = 1 (grid 4 wide), second anchor -> row (1 * 4 + 2) * 2 + 1
    scores[1][13] = 0.9
    dists[1][13] = [1, 2, 3, 4]
    kps[1][13] = [0.5, -0.5, 1, 1, 0, 0, -1, 2, 0.25, 0.75]
    scores[0][5] = 0.49  # below the threshold
    scores[2][2] = 0.5  # exactly at the threshold: kept; stride 32, cell (1, 0), first anchor
    dists[2][2] = [0.5, 0, 0.5, 1]
    boxes, s, k = decode_scrfd(scores, dists, kps, (width, height), threshold=0.5)
    # anchor points are cell corners times the stride: (32, 16) and (32, 0)
    np.testing.assert_allclose(boxes, [[32 - 16, 16 - 32, 32 + 48, 16 + 64], [32 - 16, 0, 32 + 16, 32]])
    np.testing.assert_allclose(s, [0.9, 0.5])
    np.testing.assert_allclose(k[0], [[40, 8], [48, 32], [32, 16], [16, 48], [36, 28]])
    np.testing.assert_allclose(k[1], [[32, 0]] * 5)


def test_decode_scrfd_rejects_wrong_counts():
    with pytest.raises(ValueError, match="stride 8"):
        decode_scrfd([np.zeros((10, 1))] * 3, [np.zeros((10, 4))] * 3, None, (64, 32))


def test_nms_keeps_best_of_overlapping():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2]  # identical boxes: IoU 1 > 0.99


# --------------------------------------------------------------------------- detector on ONNX


def test_detector_frame_coordinates_and_channel_order(tmp_path):
    path = make_detector(tmp_path / "det_10g.onnx")
    det = SCRFDDetector(path, det_size=(128, 128), providers="cpu")
    (rows,) = det.detect([red_square_frame()])
    assert rows.shape == (1, 15)  # both anchors fire on one cell; NMS keeps one
    scale, anchor, stride = 0.4, np.array([64.0, 32.0]), 32
    box = np.concatenate([anchor - DISTANCES[:2] * stride, anchor + DISTANCES[2:] * stride]) / scale
    np.testing.assert_allclose(rows[0, :4], box, atol=1e-3)
    np.testing.assert_allclose(rows[0, :4], [120, 60, 240, 200], atol=1e-3)
    np.testing.assert_allclose(rows[0, 4], sigmoid(10 * (255 - 127.5) / 128 - 5), atol=1e-5)
    np.testing.assert_allclose(rows[0, 5:], ((anchor + KPS.reshape(5, 2) * stride) / scale).ravel(), atol=1e-3)
    # Fed as LatentSync does (RGB where BGR is expected) the network sees blue in channel 0.
    swapped = SCRFDDetector(path, det_size=(128, 128), providers="cpu", rgb_as_bgr=True)
    assert swapped.detect([red_square_frame()])[0].shape == (0, 15)
    assert det.detect([np.zeros((240, 320, 3), np.uint8)])[0].shape == (0, 15)


def test_detector_without_keypoints(tmp_path):
    det = SCRFDDetector(make_detector(tmp_path / "det.onnx", outputs=6), det_size=(128, 128))
    rows = det.detect([red_square_frame()])[0]
    assert rows.shape == (1, 5)
    np.testing.assert_allclose(rows[0, :4], [120, 60, 240, 200], atol=1e-3)


def test_signature_errors_name_the_file(tmp_path):
    lmk = make_landmark_model(tmp_path / "2d106det.onnx")
    with pytest.raises(InsightFaceModelError, match="2d106det.onnx: not an SCRFD"):
        SCRFDDetector(lmk)
    bad_kps = make_detector(tmp_path / "odd_det.onnx", kps_dim=8)
    with pytest.raises(InsightFaceModelError, match=r"odd_det.onnx: .*output 6 \(454\) should be \[N, 10\]"):
        SCRFDDetector(bad_kps)
    det = make_detector(tmp_path / "det_10g.onnx")
    with pytest.raises(InsightFaceModelError, match="det_10g.onnx: not a 106-point landmark model"):
        Landmark106(det)
    with pytest.raises(InsightFaceModelError, match="lmk68.onnx: not a 106-point"):
        Landmark106(make_landmark_model(tmp_path / "lmk68.onnx", out_dim=136))
    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(InsightFaceModelError, match="broken.onnx: cannot be loaded"):
        Landmark106(str(garbage))
    with pytest.raises(InsightFaceModelError, match="not found: .*missing.onnx"):
        SCRFDDetector(str(tmp_path / "missing.onnx"))


# --------------------------------------------------------------------------- 106 landmarks


def test_landmark_crop_round_trip(tmp_path):
    pred = np.random.default_rng(0).uniform(-1, 1, 212)
    model = Landmark106(make_landmark_model(tmp_path / "2d106det.onnx", bias=pred), providers="cpu")
    frames = [np.zeros((300, 400, 3), np.uint8)] * 2
    boxes = [(100, 50, 180, 170), (10.5, 20.25, 210.5, 120.25)]
    out = model.landmarks(frames, boxes)
    for pts, (x1, y1, x2, y2) in zip(out, boxes):
        # crop: box centre at (96, 96), 192 px = 1.5 x the longer side; output (p + 1) * 96
        s = 192 / (1.5 * max(x2 - x1, y2 - y1))
        crop = (pred.reshape(106, 2) + 1) * 96
        expected = (crop - 96) / s + [(x1 + x2) / 2, (y1 + y2) / 2]
        assert pts.shape == (106, 2) and pts.dtype == np.float32
        np.testing.assert_allclose(pts, expected, atol=1e-3)


def test_landmark_input_is_raw_rgb(tmp_path):
    weight = np.zeros((3, 212))
    weight[0] = 0.001  # output follows channel 0's mean, unscaled pixel values
    path = make_landmark_model(tmp_path / "2d106det.onnx", weight=weight)
    frame = np.zeros((300, 400, 3), np.uint8)
    frame[:] = (200, 10, 30)
    box = (100, 50, 180, 170)  # its crop stays inside the frame
    s, centre = 192 / 180, np.array([140.0, 110.0])
    for rgb_as_bgr, channel0 in ((False, 200), (True, 30)):
        model = Landmark106(path, rgb_as_bgr=rgb_as_bgr, batch_size=1)
        (pts,) = model.landmarks([frame], [box])
        np.testing.assert_allclose(pts, np.broadcast_to(centre + channel0 * 0.001 * 96 / s, (106, 2)), atol=1e-3)


# --------------------------------------------------------------------------- finder + landmarker


def find_insightface_models(folder):
    found, _ = find_weights(folder, ["insightface_detector", "insightface_landmarks"], check_size=False)
    return {key: found.get(name) and str(found[name])
            for key, name in (("detection", "insightface_detector"), ("landmark_2d_106", "insightface_landmarks"))}


def test_find_insightface_models(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    weights = tmp_path / "weights"
    assert find_insightface_models(str(weights)) == {"detection": None, "landmark_2d_106": None}
    sub = weights / "auxiliary" / "models" / "buffalo_l"
    sub.mkdir(parents=True)
    (sub / "det_10g.onnx").write_bytes(b"x")
    own = tmp_path / "home" / ".insightface" / "models" / "buffalo_l"
    own.mkdir(parents=True)
    (own / "2d106det.onnx").write_bytes(b"x")
    (own / "det_10g.onnx").write_bytes(b"x")
    found = find_insightface_models(str(weights))
    assert found == {"detection": str(sub / "det_10g.onnx"), "landmark_2d_106": str(own / "2d106det.onnx")}
    (weights / "buffalo_l").mkdir()
    (weights / "buffalo_l" / "det_10g.onnx").write_bytes(b"x")
    assert find_insightface_models(str(weights))["detection"] == str(weights / "buffalo_l" / "det_10g.onnx")
    assert find_insightface_models(None)["detection"] == str(own / "det_10g.onnx")
    for sub in ("models/buffalo_l", "insightface/models/buffalo_l"):
        other = tmp_path / sub.replace("/", "_")
        (other / sub).mkdir(parents=True)
        (other / sub / "2d106det.onnx").write_bytes(b"x")
        assert find_insightface_models(str(other))["landmark_2d_106"] == str(other / sub / "2d106det.onnx")


def test_landmarker_uses_matching_detection(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    weights = tmp_path / "weights"
    with pytest.raises(InsightFaceModelError, match="InsightFace model not found: .*det_10g.onnx"):
        InsightFaceLandmarker.from_files(str(weights / "det_10g.onnx"), str(weights / "2d106det.onnx"))
    (weights / "buffalo_l").mkdir(parents=True)
    make_detector(weights / "buffalo_l" / "det_10g.onnx")
    pred = np.random.default_rng(1).uniform(-1, 1, 212)
    make_landmark_model(weights / "buffalo_l" / "2d106det.onnx", bias=pred)
    found = find_insightface_models(str(weights))
    lm = InsightFaceLandmarker.from_files(found["detection"], found["landmark_2d_106"], providers="cpu",
                                          det_size=(128, 128))
    frames = [red_square_frame(), np.zeros((240, 320, 3), np.uint8), red_square_frame()]
    boxes = [(130, 70, 230, 190), (130, 70, 230, 190), (0, 0, 40, 40)]
    chosen = lm.select_boxes(frames, boxes)
    np.testing.assert_allclose(chosen[0][0], [120, 60, 240, 200], atol=1e-3)
    assert [m for _, m in chosen] == [True, False, False]  # no face / no overlap: the given box
    np.testing.assert_array_equal(chosen[2][0], boxes[2])
    out = lm.landmarks(frames, boxes)
    direct = lm.landmark_model.landmarks(frames, [c for c, _ in chosen])
    for a, b in zip(out, direct):
        np.testing.assert_allclose(a, b)
    # LatentSync's own pick ignores the given box
    pick = InsightFaceLandmarker(lm.detector, lm.landmark_model, choice="latentsync")
    np.testing.assert_allclose(pick.select_boxes(frames[2:], boxes[2:])[0][0], [120, 60, 240, 200], atol=1e-3)


def test_latentsync_face_choice():
    dets = np.array([
        [0, 0, 40, 100, 0.9],      # too narrow (< 50 px)
        [0, 0, 200, 100, 0.9],     # too wide (w / h 2.0)
        [0, 0, 300, 300, 0.4],     # score below 0.5
        [10, 10, 70.9, 100.9, 0.9],  # 60 x 90 after truncation
        [0, 0, 80, 120, 0.6],      # largest valid
        [5, 5, 85, 125, 0.99],     # same area: the first one stays
    ])
    assert latentsync_face_choice(dets) == 4
    assert latentsync_face_choice(dets[:4]) == 3
    assert latentsync_face_choice(dets[:3]) is None
    assert latentsync_face_choice(np.zeros((0, 15))) is None


# --------------------------------------------------------------------------- alignment (1.6 path)


def test_three_points_106_matches_hand_computation():
    rng = np.random.default_rng(2)
    lmk = rng.uniform(0, 500, (106, 2))
    lmk[43] = [10.5, 11.5]  # halves round to even
    groups = ([43, 48, 49, 50, 51], [101, 102, 103, 104, 105], [74, 77, 83, 86])
    expected = []
    for idx in groups:
        rounded = [[round(float(lmk[i, 0])), round(float(lmk[i, 1]))] for i in idx]
        expected.append([round(sum(p[0] for p in rounded) / len(idx)), round(sum(p[1] for p in rounded) / len(idx))])
    np.testing.assert_array_equal(la.three_points_106(lmk), expected)
    plain = [lmk[idx].mean(0) for idx in groups]
    np.testing.assert_allclose(la.three_points_106(lmk, round_like_upstream=False), plain)
    with pytest.raises(ValueError, match="106 landmarks"):
        la.three_points_106(np.zeros((68, 2)))


def _upstream_style_affine(points, template, previous_bias=None):
    """Independent reference: unbiased standard deviations, Procrustes rotation, the third point's
    normalised residual blended 0.2 / 0.8 with the previous frame's."""
    import torch

    p1, p2 = torch.tensor(points, dtype=torch.float64), torch.tensor(template, dtype=torch.float64)
    c1, c2 = p1.mean(0), p2.mean(0)
    s1, s2 = (p1 - c1).std(), (p2 - c2).std()
    n1, n2 = (p1 - c1) / s1, (p2 - c2) / s2
    u, _, v = torch.svd(n1.T @ n2)
    r = v @ u.T
    if torch.det(r) < 0:
        v[:, -1] *= -1
        r = v @ u.T
    m = torch.cat([(s2 / s1) * r, (c2 - (s2 / s1) * r @ c1)[:, None]], 1)
    bias = n2[2] - n1[2]
    if previous_bias is not None:
        bias = previous_bias * 0.2 + bias * 0.8
    m[:, 2] += bias
    return m.numpy(), bias


def test_estimate_affine_106_matches_upstream_style():
    rng = np.random.default_rng(3)
    base = rng.uniform(100, 400, (106, 2))
    smoother = la.AlignmentSmoother()
    bias = None
    for step in range(2):
        lmk = base + rng.normal(0, 2, base.shape) * step
        ref, bias = _upstream_style_affine(la.three_points_106(lmk), la.template_points(512), bias)
        np.testing.assert_allclose(la.estimate_affine_106(lmk, 512, smoother), ref, atol=1e-9)
    # ddof changes only the residual, by sqrt(5 / 6)
    pts = la.three_points_106(base)
    m0, b0 = la.similarity_transform(pts, la.template_points())
    m1, b1 = la.similarity_transform(pts, la.template_points(), ddof=1)
    np.testing.assert_allclose(m1, m0, atol=1e-12)
    np.testing.assert_allclose(b1, b0 * math.sqrt(5 / 6), atol=1e-12)


def test_align_face_interpolation():
    frame = np.random.default_rng(4).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    affine = np.array([[0.9, 0.1, -50.0], [-0.1, 0.9, -20.0]])
    lanczos = la.align_face(frame, affine, interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(la.align_face(frame, affine), lanczos)
    box = cv2.warpAffine(frame, affine, la.face_box_size(256), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(127, 127, 127))
    expected = cv2.resize(box, (256, 256), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(la.align_face(frame, affine, interpolation=cv2.INTER_LINEAR), expected)
    assert la.face_box_size(512) == (420, 560)
