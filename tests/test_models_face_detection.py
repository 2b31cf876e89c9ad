import warnings

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from lipgraph.models.face_detection import FallbackWarning, box_iou, build_face_detector, pick_face
from lipgraph.models.haar_face import HaarFaceDetector
from lipgraph.models.s3fd import S3FD, S3FDDetector, WEIGHTS_FILENAME

# Astronaut's face measured on the image: cheek to cheek x 180..270, hairline y ~72 to chin ~176.
ASTRONAUT_FACE = np.array([180, 72, 270, 176], np.float64)


@pytest.fixture(scope="module")
def haar():
    return HaarFaceDetector()


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """Point the torch hub cache at an empty folder so a real download cannot leak in."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


# ----------------------------------------------------------------------------- Haar


def test_haar_finds_astronaut_face(haar):
    (boxes,) = haar.detect([data.astronaut()])
    assert boxes.dtype == np.float32 and boxes.shape == (1, 5)
    x1, y1, x2, y2, score = boxes[0]
    assert box_iou(ASTRONAUT_FACE, boxes)[0] > 0.75
    assert y2 >= 170  # extended to the chin like an S3FD box
    assert 0.5 <= score < 1.0


def test_haar_chin_extension(haar):
    raw = HaarFaceDetector(chin_extend=0.0).detect([data.astronaut()])[0][0]
    ext = haar.detect([data.astronaut()])[0][0]
    np.testing.assert_allclose(ext[:3], raw[:3])
    height = raw[3] - raw[1]
    assert ext[3] == pytest.approx(raw[3] + 0.15 * height, abs=1e-3)
    assert raw[3] < 170  # the cascade's own box stops short of the chin


@pytest.mark.parametrize("name", ["coffee", "rocket", "chelsea"])
def test_haar_no_face_images(haar, name):
    (boxes,) = haar.detect([getattr(data, name)()])
    assert boxes.shape == (0, 5) and boxes.dtype == np.float32


def test_haar_downscale_maps_back(haar):
    small = data.astronaut()
    big = cv2.resize(small, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    native = HaarFaceDetector(max_side=None).detect([small])[0]
    down = HaarFaceDetector(max_side=512).detect([big])[0]  # detector works at 512 again
    assert down.shape == (1, 5)
    np.testing.assert_allclose(down[0, :4] / 2, native[0, :4], atol=4)
    # Face placed off-centre in a wide frame: coordinates stay in the frame's pixels.
    canvas = np.full((600, 1000, 3), 128, np.uint8)
    canvas[50:562, 400:912] = small
    (boxes,) = haar.detect([canvas])
    best = pick_face(boxes, None)
    assert box_iou(ASTRONAUT_FACE + [400, 50, 400, 50], best[None])[0] > 0.7


def test_haar_rejects_bad_frames(haar):
    with pytest.raises(ValueError, match="frame 0"):
        haar.detect([np.zeros((64, 64), np.uint8)])
    assert haar.detect([]) == []


# ----------------------------------------------------------------------------- build


def test_auto_falls_back_to_haar_with_one_warning(tmp_path, empty_hub):
    with pytest.warns(FallbackWarning) as record:
        det = build_face_detector("auto", weights_dir=str(tmp_path / "models"), min_neighbors=3,
                                  score_threshold=0.7)
    assert len(record) == 1
    msg = str(record[0].message)
    assert WEIGHTS_FILENAME in msg and str(tmp_path / "models") in msg and str(empty_hub) in msg
    assert issubclass(FallbackWarning, UserWarning)
    assert det.name == "haar" and isinstance(det, HaarFaceDetector)
    assert det.min_neighbors == 3  # S3FD-only options are dropped on fallback
    assert det.detect([data.astronaut()])[0].shape[0] == 1


def test_auto_uses_s3fd_when_weights_exist(tmp_path, empty_hub):
    weights = tmp_path / "models" / "face_detection"
    weights.mkdir(parents=True)
    torch.save(S3FD().state_dict(), weights / WEIGHTS_FILENAME)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det = build_face_detector("auto", weights_dir=str(tmp_path / "models"),
                                  score_threshold=0.7, max_side=96, min_neighbors=3)
    assert det.name == "s3fd" and isinstance(det, S3FDDetector)
    assert det.score_threshold == 0.7 and det.max_side == 96
    assert det.model.conv1_1.weight.dtype == torch.float32
    assert not any(p.requires_grad for p in det.model.parameters())
    (boxes,) = det.detect([np.zeros((64, 80, 3), np.uint8)])
    assert boxes.shape[1] == 5 and boxes.dtype == np.float32

    explicit = build_face_detector("s3fd", weights_dir=str(tmp_path / "models"), dtype=torch.float64)
    assert explicit.name == "s3fd" and explicit.model.fc7.weight.dtype == torch.float64
    with pytest.raises(TypeError):
        build_face_detector("s3fd", weights_dir=str(tmp_path / "models"), min_neighbors=3)


def test_build_errors(tmp_path, empty_hub):
    with pytest.raises(FileNotFoundError) as err:
        build_face_detector("s3fd", weights_dir=str(tmp_path))
    assert WEIGHTS_FILENAME in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(ValueError, match="kind"):
        build_face_detector("retinaface")
    with pytest.raises(TypeError, match="bogus"):
        build_face_detector("haar", bogus=1)
    with pytest.raises(TypeError):
        build_face_detector("haar", score_threshold=0.5)
    det = build_face_detector("haar", min_neighbors=7, max_side=320)
    assert det.name == "haar" and det.min_neighbors == 7 and det.max_side == 320


# ----------------------------------------------------------------------------- pick_face


def test_pick_face_rules():
    small = np.array([100, 100, 140, 150, 0.9], np.float32)
    large = np.array([300, 50, 420, 200, 0.8], np.float32)
    boxes = np.stack([small, large])
    assert pick_face(np.zeros((0, 5), np.float32), None) is None
    assert pick_face(np.zeros((0, 5), np.float32), small) is None
    np.testing.assert_array_equal(pick_face(boxes, None), large)
    # Continues the track of the small face when the previous box overlaps it.
    np.testing.assert_array_equal(pick_face(boxes, np.array([104, 98, 142, 152, 0.9])), small)
    # A previous box that overlaps nothing well (IoU <= 0.3) -> the largest.
    np.testing.assert_array_equal(pick_face(boxes, np.array([130, 140, 180, 200])), large)
    # A single face is returned whatever the previous box was.
    np.testing.assert_array_equal(pick_face(boxes[:1], large), small)
    out = pick_face(boxes, None)
    out[0] = -1
    assert boxes[1, 0] == 300  # a copy, not a view


def test_box_iou():
    a = np.array([0, 0, 10, 10])
    others = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]])
    np.testing.assert_allclose(box_iou(a, others), [1.0, 1 / 3, 0.0, 0.0])
