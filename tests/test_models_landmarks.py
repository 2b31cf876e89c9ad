import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lipgraph.models import landmarks as lmk
from lipgraph.models.landmarks import (
    FAN,
    FAN_CONFIG,
    FANLandmarks,
    FANWeightsError,
    box_landmarks,
    crop_face,
    crop_geometry,
    heatmap_peaks,
    load_fan,
)
from lipgraph.models.checkpoint import load_strict
from lipgraph.models.weight_finder import find_weights

# torch.jit is deprecated but is how face_alignment 1.3 / 1.4 ship FAN
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")

ASTRONAUT_BOX = (177, 66, 272, 161)  # OpenCV Haar box of skimage's astronaut face


class DotFinder(nn.Module):
    """Stand-in FAN: every heatmap is the 4x4-pooled brightness of the crop, so each peak sits on
    the brightest spot of the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.mean(1, keepdim=True), 4).repeat(1, 68, 1, 1)


class FixedPeaks(nn.Module):
    """Stand-in FAN with a known Gaussian peak per channel, independent of the input."""

    def __init__(self, centres: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centres", centres)  # [68, 2] (x, y) in heatmap cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = torch.arange(64, dtype=x.dtype, device=x.device)
        gx = (grid[None, :] - self.centres[:, 0:1].to(x.dtype)) ** 2  # [68, 64]
        gy = (grid[None, :] - self.centres[:, 1:2].to(x.dtype)) ** 2
        maps = torch.exp(-(gy[:, :, None] + gx[:, None, :]) / 2.0)
        return maps[None].repeat(x.shape[0], 1, 1, 1) + 0 * x.mean()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The models here are tiny: extra threads cost more than they save and stall on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """Point torch hub at an empty folder so a real cached FAN cannot interfere."""
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def _dot_frames(rng, count, height=241, width=317):
    frames, boxes, truth = [], [], []
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(count):
        side = rng.uniform(30, 45)
        x1, y1 = rng.uniform(0, width - side), rng.uniform(0, height - side)
        box = (x1, y1, x1 + side, y1 + side * rng.uniform(0.9, 1.2))
        px, py = rng.uniform(x1 + 5, box[2] - 5), rng.uniform(y1 + 5, box[3] - 5)
        blob = 255 * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 2.0**2))
        frames.append(np.repeat(blob[:, :, None], 3, axis=2).astype(np.uint8))
        boxes.append(box)
        truth.append((px, py))
    return frames, boxes, np.array(truth)


def test_scripted_fan_found_and_recovers_positions(tmp_path, empty_hub):
    weights = tmp_path / "weights"
    (weights / "face_alignment").mkdir(parents=True)
    scripted = torch.jit.script(DotFinder())
    torch.jit.save(scripted, str(weights / "face_alignment" / "2DFAN4-cd938726ad.zip"))

    path = find_fan(weights)
    assert path == weights / "face_alignment" / "2DFAN4-cd938726ad.zip"
    landmarker = FANLandmarks(load_fan(str(path)), source=str(path))
    landmarker.batch_size = 3  # exercise chunking

    frames, boxes, truth = _dot_frames(np.random.default_rng(0), 8)
    out = landmarker.landmarks(frames, boxes)
    assert len(out) == 8
    for points, (px, py) in zip(out, truth):
        assert points.shape == (68, 2) and points.dtype == np.float32
        # heatmap cells are 1-1.5 px here; quarter-cell refinement plus face_alignment's
        # side / 256 offset between its crop window and its inverse map stay within ~1 px
        assert np.abs(points[:, 0] - px).max() < 1.1
        assert np.abs(points[:, 1] - py).max() < 1.1


def test_fixed_peak_per_channel_maps_through_crop():
    rng = np.random.default_rng(1)
    centres = np.stack([rng.integers(2, 62, 68), rng.integers(2, 62, 68)], -1).astype(np.float32)
    centres += rng.choice([-0.3, 0.3], size=(68, 2)).astype(np.float32)  # off-centre: refinement steps
    landmarker = FANLandmarks(torch.jit.script(FixedPeaks(torch.from_numpy(centres))))
    box = (101.0, 57.0, 181.0, 149.0)
    (points,) = landmarker.landmarks([np.zeros((300, 280, 3), np.uint8)], [box])

    # Expected from face_alignment's centre/scale convention, derived independently of the crop window.
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = box[0] + w / 2, box[1] + h / 2 - 0.12 * h
    side = 200.0 * (w + h) / 195.0
    cells = np.round(centres) + 0.5 + 0.25 * np.sign(centres - np.round(centres))
    expected = np.stack([cx, cy]) - side / 2 + cells * side / 64 - 0.5
    np.testing.assert_allclose(points, expected, atol=1e-3)
    # distinct channels stay distinct (per-channel decoding, not one shared peak)
    assert len(np.unique(np.round(points[:, 0]))) > 30


def test_heatmap_peaks_quarter_refinement():
    hm = np.zeros((1, 2, 64, 64), np.float32)
    hm[0, 0, 20, 10] = 1.0
    hm[0, 0, 20, 11] = 0.5  # right neighbour higher -> +0.25 in x
    hm[0, 0, 19, 10] = 0.5  # upper neighbour higher -> -0.25 in y
    hm[0, 1, 0, 63] = 1.0  # border cell: no refinement
    hm[0, 1, 1, 62] = 0.9
    peaks, scores = heatmap_peaks(hm)
    np.testing.assert_allclose(peaks[0, 0], [10.75, 20.25])
    np.testing.assert_allclose(peaks[0, 1], [63.5, 0.5])
    np.testing.assert_allclose(scores[0], [1.0, 1.0])


def test_crop_geometry_follows_center_scale_convention():
    x0, y0, x1, y1 = crop_geometry((100, 100, 200, 200))
    side = 200 * 200 / 195
    assert abs((x1 - x0) - side) <= 1.5 and abs((y1 - y0) - side) <= 1.5  # corners are truncated
    assert abs((x0 + x1) / 2 - 150) <= 1
    assert abs((y0 + y1) / 2 - (150 - 12)) <= 1  # centre raised by 12 % of the box height


def test_crop_face_pads_outside_frame():
    frame = np.full((120, 100, 3), 200, np.uint8)
    frame[:, 30:] = 50
    crop = crop_face(frame, (-20, -30, 40, 30))  # box hangs off the top-left corner
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    assert np.all(crop[:20, :20] == 0)  # outside the frame: zeros, as face_alignment pads
    x0, y0, x1, y1 = crop_geometry((-20, -30, 40, 30))
    col = int((30 - x0) * 256 / (x1 - x0))  # crop column of the frame's 200 -> 50 step
    row = int((20 - y0) * 256 / (y1 - y0))
    assert crop[row, col - 4, 0] == 200 and crop[row, col + 4, 0] == 50


def test_fan_output_shape_checked(tmp_path):
    bad = torch.jit.script(nn.Conv2d(3, 5, 1))
    landmarker = FANLandmarks(bad, source="bad.zip")
    with pytest.raises(FANWeightsError, match="bad.zip"):
        landmarker.landmarks([np.zeros((64, 64, 3), np.uint8)], [(10, 10, 40, 40)])


def find_fan(folder):
    """Where the weights table's FAN entry is found (any size), or None."""
    found, _ = find_weights(folder, ["fan_landmarks"], check_size=False, hf_cache_dir=os.devnull)
    return found.get("fan_landmarks")


def test_finder_order_and_hub_lookup(tmp_path, empty_hub):
    assert find_fan(tmp_path) is None
    _, missing = find_weights(tmp_path, ["fan_landmarks"], check_size=False, hf_cache_dir=os.devnull)
    assert "Missing 1 model file(s)" in str(missing) and str(tmp_path / "auxiliary" / "2DFAN4*.zip") in str(missing)
    hub_file = empty_hub / "checkpoints" / "2DFAN4-11f355bf06.pth.tar"
    hub_file.write_bytes(b"x")
    assert find_fan(None) == hub_file
    top = tmp_path / "2DFAN4_1.6-c827573f02.zip"
    top.write_bytes(b"x")
    assert find_fan(tmp_path) == top  # user folder before the hub cache
    # 3D networks are not 2D landmarkers
    (tmp_path / "face_alignment").mkdir()
    (tmp_path / "face_alignment" / "3DFAN4-4a694010b9.zip").write_bytes(b"x")
    assert find_fan(tmp_path) == top
    # LatentSync's checkpoint layout
    aux = tmp_path / "checkpoints" / "auxiliary"
    aux.mkdir(parents=True)
    (aux / "2DFAN4-cd938726ad.zip").write_bytes(b"x")
    assert find_fan(tmp_path) == aux / "2DFAN4-cd938726ad.zip"


def test_broken_fan_file_raises_naming_it(tmp_path):
    path = tmp_path / "2DFAN4-cd938726ad.zip"
    path.write_bytes(b"not an archive")
    with pytest.raises(FANWeightsError, match="2DFAN4-cd938726ad.zip"):
        load_fan(str(path))
    with pytest.raises(FileNotFoundError, match="not found: .*missing.zip"):
        load_fan(str(tmp_path / "missing.zip"))


def test_fan_architecture_matches_upstream_size():
    with torch.device("meta"):
        model = FAN.from_config(FAN_CONFIG)
    sd = model.state_dict()
    # face_alignment's FAN(4): 1129 entries, 23,820,176 parameters
    assert len(sd) == 1129
    assert sum(p.numel() for p in model.parameters()) == 23_820_176
    assert tuple(sd["l3.weight"].shape) == (68, 256, 1, 1)
    assert "m0.b2_plus_1.conv3.weight" in sd and "m3.b3_4.downsample.0.weight" not in sd
    assert tuple(sd["conv4.downsample.2.weight"].shape) == (256, 128, 1, 1)


def _small_fan():
    return FAN(num_modules=2, hourglass_depth=2, num_features=64, num_landmarks=68).eval()


def test_state_dict_loader_is_strict():
    src = _small_fan()
    sd = src.state_dict()
    dst = _small_fan()
    no_counters = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    load_strict(dst, no_counters, "ok.pth.tar", "FAN", FANWeightsError)
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(dst.state_dict()[k], v)

    missing = {k: v for k, v in sd.items() if k != "l1.bias"}
    with pytest.raises(FANWeightsError, match=r"(?s)m.pth.tar.*missing 1: l1.bias"):
        load_strict(_small_fan(), missing, "m.pth.tar", "FAN", FANWeightsError)
    extra = dict(sd, **{"extra.weight": torch.zeros(1)})
    with pytest.raises(FANWeightsError, match="unexpected 1: extra.weight"):
        load_strict(_small_fan(), extra, "u.pth.tar", "FAN", FANWeightsError)
    wrong = dict(sd, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(FANWeightsError, match="conv1.weight"):
        load_strict(_small_fan(), wrong, "s.pth.tar", "FAN", FANWeightsError)


def test_pth_tar_file_loads_into_fan(tmp_path, monkeypatch):
    # Full-size loading path with a small config, so the test stays fast.
    monkeypatch.setattr(lmk, "FAN_CONFIG", dict(num_modules=2, hourglass_depth=2, num_features=64, num_landmarks=68))
    src = _small_fan()
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "2DFAN4-11f355bf06.pth.tar"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, str(path))
    model = load_fan(str(path), "cpu", torch.float32)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 68, 8, 8)
        assert torch.allclose(out, src(x), atol=1e-5)


def test_box_landmarks_geometry():
    box = (40.0, 60.0, 140.0, 170.0)
    points = box_landmarks(box)
    assert points.shape == (68, 2) and points.dtype == np.float32
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    u = (points[:, 0] + 0.5 - x1) / w
    v = (points[:, 1] + 0.5 - y1) / h
    assert u.min() >= 0 and u.max() <= 1
    # left-right mirror symmetric about the box centre
    mirror = [16 - i for i in range(17)] + list(range(26, 16, -1)) + [27, 28, 29, 30, 35, 34, 33, 32, 31]
    np.testing.assert_allclose(u[:36] + u[mirror], 1.0, atol=1e-6)
    np.testing.assert_allclose(v[:36], v[mirror], atol=1e-6)
    brow_l, brow_r, nose = u[17:22].mean(), u[22:27].mean(), (u[27:36].mean(), v[27:36].mean())
    # brows over the eyes, nose centred below, in the order brows < eyes < nose < mouth < chin
    assert 0.2 < brow_l < 0.35 and 0.65 < brow_r < 0.8
    assert abs(nose[0] - 0.5) < 1e-6
    order = [v[17:27].mean(), v[36:48].mean(), v[27:36].mean(), v[48:68].mean(), v[8]]
    assert all(a < b for a, b in zip(order, order[1:]))
    # brow-to-nose drop ~0.7 of the brow separation on a square box, as in real faces
    # (LatentSync's template has 0.49; the similarity fit absorbs the difference)
    sep = brow_r - brow_l
    drop = v[27:36].mean() - v[17:22].mean()
    assert 0.6 < drop / sep < 0.85
    # equivariant to translating / scaling the box
    moved = box_landmarks((x1 + 10, y1 - 5, x1 + 10 + 2 * w, y1 - 5 + 2 * h))
    np.testing.assert_allclose(moved, (points + 0.5 - [x1, y1]) * 2 + [x1 + 10, y1 - 5] - 0.5, atol=1e-3)
    with pytest.raises(ValueError):
        box_landmarks((10, 10, 5, 20))


def test_box_landmarks_on_astronaut_match_hand_annotation():
    # Hand-annotated brow centres and nose centre of skimage's astronaut (pixels).
    points = box_landmarks(ASTRONAUT_BOX)
    brow_l, brow_r, nose = points[17:22].mean(0), points[22:27].mean(0), points[27:36].mean(0)
    np.testing.assert_allclose(brow_l, (203, 90), atol=4)
    np.testing.assert_allclose(brow_r, (248, 91), atol=4)
    np.testing.assert_allclose(nose, (225, 121.7), atol=4)
