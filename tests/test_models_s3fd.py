import math
import os

import numpy as np
import pytest
import torch

from lipgraph.models.s3fd import (
    MEAN_BGR,
    S3FD,
    S3FDDetector,
    S3FDWeightsError,
    WEIGHTS_FILENAME,
    decode_s3fd,
    load_s3fd,
)
from lipgraph.models.face_detection import nms
from lipgraph.models.weight_finder import find_weights
from tests.spec_keys import check_rejects_bad_files, read_keys_tsv, state_dict_keys


@pytest.fixture(scope="module")
def random_state():
    torch.manual_seed(0)
    return S3FD().state_dict()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, random_state):
    path = tmp_path_factory.mktemp("s3fd") / WEIGHTS_FILENAME
    torch.save(random_state, path)
    return str(path)


def save_variant(tmp_path, random_state, change):
    state = {k: torch.empty(v.shape) for k, v in random_state.items()}
    change(state)
    path = tmp_path / "variant.pth"
    torch.save(state, path)
    return str(path)


# ----------------------------------------------------------------------------- architecture


def test_state_dict_matches_upstream_key_list(specs_dir):
    spec = read_keys_tsv(os.path.join(specs_dir, "s3fd.keys.tsv"))
    with torch.device("meta"):
        model = S3FD.from_config({})
    assert state_dict_keys(model) == spec
    assert len(list(model.buffers())) == 0
    assert sum(p.numel() for p in model.parameters()) == 22_459_110


def test_from_config_rejects_options():
    assert isinstance(S3FD.from_config(None), S3FD)
    with pytest.raises(ValueError, match="width"):
        S3FD.from_config({"width": 2})


def test_head_shapes_and_background_maxout():
    model = S3FD().eval()
    with torch.no_grad():
        conf = model.conv3_3_norm_mbox_conf
        conf.weight.zero_()
        conf.bias.copy_(torch.tensor([1.0, 3.0, 2.0, -4.0]))
        out = model(torch.zeros(1, 3, 64, 96))
    assert len(out) == 6
    # Strides 4..32 from pooling; fc6's padding 3 widens the stride-32 map by 4 cells.
    assert [tuple(c.shape[2:]) for c, _ in out] == [(16, 24), (8, 12), (4, 6), (6, 7), (3, 4), (2, 2)]
    assert all(c.shape[1] == 2 and l.shape[1] == 4 for c, l in out)
    first = out[0][0]
    assert torch.all(first[0, 0] == 3.0) and torch.all(first[0, 1] == -4.0)


def test_l2norm_stays_finite_in_half_precision():
    model = S3FD()
    x = torch.full((1, 256, 4, 4), 600.0, dtype=torch.float16)  # sum of squares > fp16 max
    y = model.conv3_3_norm.half()(x)
    assert torch.isfinite(y).all()
    assert torch.allclose(y.float(), torch.full_like(y.float(), 10.0 / 16.0), atol=1e-3)


# ----------------------------------------------------------------------------- loading


def test_strict_load_roundtrip(weights_file, random_state):
    model = load_s3fd(weights_file)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    loaded = model.state_dict()
    assert list(loaded) == list(random_state)
    for k, v in random_state.items():
        assert torch.equal(loaded[k], v), k
    half = load_s3fd(weights_file, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half.parameters())


def test_load_reports_missing_key(tmp_path, random_state):
    path = save_variant(tmp_path, random_state, lambda s: s.pop("fc7.bias"))
    with pytest.raises(S3FDWeightsError) as err:
        load_s3fd(path)
    assert "missing" in str(err.value) and "fc7.bias" in str(err.value) and path in str(err.value)


def test_load_reports_unexpected_key(tmp_path, random_state):
    path = save_variant(tmp_path, random_state, lambda s: s.__setitem__("conv8_1.weight", torch.zeros(1)))
    with pytest.raises(S3FDWeightsError) as err:
        load_s3fd(path)
    assert "unexpected" in str(err.value) and "conv8_1.weight" in str(err.value)


def test_load_reports_wrong_shape(tmp_path, random_state):
    path = save_variant(tmp_path, random_state,
                        lambda s: s.__setitem__("conv4_3_norm_mbox_conf.weight", torch.zeros(4, 512, 3, 3)))
    with pytest.raises(S3FDWeightsError) as err:
        load_s3fd(path)
    msg = str(err.value)
    assert "wrong shape 1: conv4_3_norm_mbox_conf.weight: file [4, 512, 3, 3] vs model [2, 512, 3, 3]" in msg
    assert path in msg
    assert "missing" not in msg and "unexpected" not in msg


def test_load_rejects_non_state_dict_and_missing_file(tmp_path):
    check_rejects_bad_files(load_s3fd, S3FDWeightsError, tmp_path, [torch.zeros(1)], "list.pth", "list.pth")


# ----------------------------------------------------------------------------- weights lookup


def test_find_weights_in_dirs_and_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    models = tmp_path / "models"
    models.mkdir()

    def find(folder):
        found, missing = find_weights(folder, ["s3fd"], check_size=False, hf_cache_dir=tmp_path / "hf")
        return found.get("s3fd"), missing

    assert find(models)[0] is None
    path, missing = find(None)
    assert path is None and str(hub / "checkpoints" / WEIGHTS_FILENAME) in missing.looked["s3fd"]

    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / WEIGHTS_FILENAME).write_bytes(b"x")
    assert find(models) == (hub / "checkpoints" / WEIGHTS_FILENAME, None)

    for sub in ("sfd", "face_detection"):       # a MuseTalk-style folder, under either name
        (models / sub).mkdir()
        (models / sub / "s3fd.pth").write_bytes(b"x")
    assert find(models)[0] == models / "face_detection" / "s3fd.pth"

    (models / WEIGHTS_FILENAME).write_bytes(b"x")
    assert find(models)[0] == models / WEIGHTS_FILENAME
    aux = tmp_path / "LatentSync" / "checkpoints" / "auxiliary"   # a LatentSync checkout
    aux.mkdir(parents=True)
    (aux / WEIGHTS_FILENAME).write_bytes(b"x")
    assert find(aux.parent.parent)[0] == aux / WEIGHTS_FILENAME


# ----------------------------------------------------------------------------- decode + NMS


def empty_level(batch, h, w):
    conf = torch.zeros(batch, 2, h, w)
    conf[:, 0] = 10.0  # confident background
    return conf, torch.zeros(batch, 4, h, w)


def encode(box, stride, ix, iy):
    """Offsets that make the anchor at cell (iy, ix) of a level decode to ``box``."""
    anchor = 4.0 * stride
    pcx, pcy = stride / 2 + ix * stride, stride / 2 + iy * stride
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = box[2] - box[0], box[3] - box[1]
    return [(cx - pcx) / (0.1 * anchor), (cy - pcy) / (0.1 * anchor),
            math.log(w / anchor) / 0.2, math.log(h / anchor) / 0.2]


def test_decode_hand_made_outputs():
    levels = [empty_level(2, 16, 16), empty_level(2, 8, 8), empty_level(2, 4, 4),
              empty_level(2, 6, 6), empty_level(2, 3, 3), empty_level(2, 2, 2)]
    # Level 2 (stride 16, anchor 64), image 1, cell (y=1, x=2): prior centre (40, 24).
    conf, loc = levels[2]
    conf[1, :, 1, 2] = torch.tensor([0.0, math.log(9.0)])  # softmax face prob 0.9
    loc[1, :, 1, 2] = torch.tensor([0.5, -0.25, 0.0, math.log(2.0) / 0.2])
    # Level 0 (stride 4, anchor 16), image 0, cell (y=3, x=5): zero offsets -> the anchor.
    conf, loc = levels[0]
    conf[0, :, 3, 5] = torch.tensor([0.0, 1.0])
    out = decode_s3fd(levels, 0.5)
    assert len(out) == 2
    p = 1 / (1 + math.exp(-1.0))
    np.testing.assert_allclose(out[0].numpy(), [[22 - 8, 14 - 8, 22 + 8, 14 + 8, p]], rtol=1e-5)
    # centre (40 + 0.5*0.1*64, 24 - 0.25*0.1*64) = (43.2, 22.4); size 64 x 128
    np.testing.assert_allclose(out[1].numpy(), [[11.2, -41.6, 75.2, 86.4, 0.9]], rtol=1e-5)
    # The threshold applies to the face probability and is strict (p = 0.5 is not a face).
    assert len(decode_s3fd(levels, 0.95)[1]) == 0
    assert decode_s3fd(levels, 0.95)[0].shape == (0, 5)
    levels[5][0][0, :, 0, 0] = 0.0
    assert decode_s3fd(levels, 0.5)[0].shape == (1, 5)


def test_decode_matches_encode_on_every_level():
    rng = np.random.default_rng(1)
    for level, stride in enumerate((4, 8, 16, 32, 64, 128)):
        levels = [empty_level(1, 5, 5) for _ in range(6)]
        conf, loc = levels[level]
        box = [10.0 + level, 20.0, 10.0 + level + 30 * (level + 1), 20.0 + 40 * (level + 1)]
        ix, iy = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        conf[0, :, iy, ix] = torch.tensor([0.0, 5.0])
        loc[0, :, iy, ix] = torch.tensor(encode(box, stride, ix, iy))
        out = decode_s3fd(levels, 0.5)[0].numpy()
        np.testing.assert_allclose(out[0, :4], box, atol=1e-3)


def test_nms_keeps_best_of_overlapping_boxes():
    boxes = np.array([
        [10, 10, 50, 50, 0.6],
        [12, 12, 52, 52, 0.9],   # overlaps box 0 heavily
        [100, 100, 140, 140, 0.7],
        [30, 30, 70, 70, 0.8],   # IoU with box 1: 529 / 2833 = 0.187 (pixel-inclusive areas)
    ], dtype=np.float32)
    keep = nms(boxes, boxes[:, 4], 0.3)
    assert keep.tolist() == [1, 3, 2]
    assert nms(boxes, boxes[:, 4], 0.18).tolist() == [1, 2]
    assert nms(boxes, boxes[:, 4], 0.19).tolist() == [1, 3, 2]
    assert nms(np.zeros((0, 5), np.float32), np.zeros(0), 0.3).shape == (0,)


# ----------------------------------------------------------------------------- detector


class RedSquareNet(torch.nn.Module):
    """Test double: 'detects' the pure red square in its (BGR, mean-free) input by emitting
    one confident stride-4 anchor whose offsets encode the square's box exactly."""

    def forward(self, x):
        b, _, h, w = x.shape
        mean = torch.tensor(MEAN_BGR).view(1, 3, 1, 1)
        bgr = x.float() + mean
        conf, loc = empty_level(b, h // 4, w // 4)
        for i in range(b):
            ys, xs = torch.nonzero((bgr[i, 2] > 200) & (bgr[i, 1] < 60) & (bgr[i, 0] < 60), as_tuple=True)
            if len(ys) == 0:
                continue
            box = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            ix, iy = int((box[0] + box[2]) / 2 // 4), int((box[1] + box[3]) / 2 // 4)
            conf[i, :, iy, ix] = torch.tensor([-10.0, 10.0])
            loc[i, :, iy, ix] = torch.tensor(encode(box, 4, ix, iy))
        return [(conf, loc)] + [empty_level(b, 1, 1) for _ in range(5)]


def red_square_frame(h, w, box):
    frame = np.full((h, w, 3), 90, np.uint8)
    x1, y1, x2, y2 = box
    frame[y1:y2, x1:x2] = (255, 0, 0)  # RGB red
    return frame


def test_detect_maps_downscaled_boxes_back():
    det = S3FDDetector(RedSquareNet(), max_side=160)
    exact = red_square_frame(480, 640, (200, 120, 320, 280))   # x4 downscale, aligned edges
    odd = red_square_frame(500, 700, (350, 100, 490, 310))     # 700 -> 160: x4.375
    small = red_square_frame(96, 128, (40, 20, 80, 60))        # below max_side: untouched
    none = np.full((96, 128, 3), 90, np.uint8)
    out = det.detect([exact, small, odd, none, exact])
    assert len(out) == 5
    np.testing.assert_allclose(out[0][:, :4], [[200, 120, 320, 280]], atol=1e-2)
    np.testing.assert_allclose(out[4], out[0])
    np.testing.assert_allclose(out[1][:, :4], [[40, 20, 80, 60]], atol=1e-3)
    np.testing.assert_allclose(out[2][:, :4], [[350, 100, 490, 310]], atol=6)
    assert out[3].shape == (0, 5) and out[3].dtype == np.float32
    assert out[0][0, 4] > 0.99


def test_detect_without_resize_and_input_checks():
    det = S3FDDetector(RedSquareNet(), max_side=None)
    out = det.detect([red_square_frame(480, 640, (201, 117, 333, 281))])
    np.testing.assert_allclose(out[0][:, :4], [[201, 117, 333, 281]], atol=1e-3)
    assert det.detect([]) == []
    with pytest.raises(ValueError, match="frame 1"):
        det.detect([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        det.detect([np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(ValueError, match="too small"):
        det.detect([np.zeros((20, 64, 3), np.uint8)])


def test_random_model_detect_is_well_formed(random_state):
    model = S3FD()
    model.load_state_dict(random_state)
    det = S3FDDetector(model, score_threshold=0.5, max_side=96, batch_size=2)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (72, 96, 3), dtype=np.uint8) for _ in range(3)]
    frames.insert(1, rng.integers(0, 256, (120, 80, 3), dtype=np.uint8))  # another size, resized
    out = det.detect(frames)
    assert len(out) == 4
    total = 0
    for frame, boxes in zip(frames, out):
        h, w = frame.shape[:2]
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 5
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 2] <= w)
        assert np.all(boxes[:, 1] >= 0) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        assert np.all(boxes[:, 4] > 0.5) and np.all(boxes[:, 4] <= 1)
        assert np.all(np.diff(boxes[:, 4]) <= 0)
        total += len(boxes)
    assert total > 0  # random heads put about half the anchors above 0.5
    # Batching does not change results: each frame alone gives the same boxes.
    for frame, boxes in zip(frames, out):
        np.testing.assert_allclose(det.detect([frame])[0], boxes, rtol=1e-4, atol=1e-3)


def test_channel_order_is_what_the_network_sees():
    # RedSquareNet finds pure red only in BGR input: it finds the RGB frame's red square with
    # channel_order="bgr" (face_alignment's convention) and not with "rgb" (MuseTalk's)
    frame = red_square_frame(128, 128, (32, 32, 96, 96))
    found = S3FDDetector(RedSquareNet(), channel_order="bgr").detect([frame])[0]
    np.testing.assert_allclose(found[0, :4], (32, 32, 96, 96), atol=1e-3)
    assert len(S3FDDetector(RedSquareNet(), channel_order="rgb").detect([frame])[0]) == 0

    seen = {}

    class Spy(RedSquareNet):
        def forward(self, x):
            seen["x"] = x.clone()
            return super().forward(x)

    frame = np.zeros((64, 64, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 200, 100, 50      # R, G, B
    S3FDDetector(Spy(), channel_order="rgb").detect([frame])
    assert seen["x"][0, :, 0, 0].tolist() == [200 - 104, 100 - 117, 50 - 123]
    S3FDDetector(Spy(), channel_order="bgr").detect([frame])
    assert seen["x"][0, :, 0, 0].tolist() == [50 - 104, 100 - 117, 200 - 123]
    with pytest.raises(ValueError, match="channel_order"):
        S3FDDetector(Spy(), channel_order="yuv")


def test_musetalk_graph_feeds_the_detector_rgb():
    from lipgraph.graph.spec import load_graph
    g = load_graph("configs/graphs/musetalk.yaml", {"video.path": "x.mp4", "audio.path": "x.wav",
                                                    "video.audio": "x.wav", "mux.path": "o.mp4"})
    assert g.stages["detect"].params["channel_order"] == "rgb"
    assert g.stages["landmarks"].params["sets"] == "68"
