import os

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from lipgraph.models.landmarks import box_landmarks
from tests.conftest import SPECS
from lipgraph.vision.latentsync_align import (
    AlignmentSmoother,
    align_face,
    estimate_affine,
    face_box_size,
    restore_face,
    similarity_transform,
    template_points,
    three_points,
)
from lipgraph.vision.latentsync_mask import (
    MaskFileError,
    keep_surroundings,
    latent_mask,
    latentsync_mask,
    load_mask,
    masked_image,
)

ASTRONAUT_BOX = (177, 66, 272, 161)  # OpenCV Haar box of skimage's astronaut face
MASK_PNG = os.path.join(SPECS, "latentsync_mask.png")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _reference_mask(size: int) -> np.ndarray:
    """Upstream's mask at ``size`` as upstream prepares it: the PNG read in colour, turned to
    RGB, resized with Lanczos, divided by 255, channel 0."""
    png = cv2.cvtColor(cv2.imread(MASK_PNG), cv2.COLOR_BGR2RGB)
    return (cv2.resize(png, (size, size), interpolation=cv2.INTER_LANCZOS4) / 255.0)[:, :, 0]


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _landmarks_from_three(points3: np.ndarray) -> np.ndarray:
    """68 points whose LatentSync three points are exactly ``points3`` (other points filler)."""
    lm = np.zeros((68, 2))
    lm[17:22] = points3[0]
    lm[22:27] = points3[1]
    lm[27:36] = points3[2]
    lm[:17] = points3.mean(0)
    lm[36:] = points3.mean(0)
    return lm


# --------------------------------------------------------------------------- mask


@pytest.mark.parametrize("size", [256, 512])
def test_drawn_mask_equals_the_official_png(size):
    mask = latentsync_mask(size)
    assert mask.shape == (size, size) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask, _reference_mask(size).astype(np.float32))
    np.testing.assert_array_equal(mask, load_mask(MASK_PNG, size))
    if size == 256:
        assert set(np.unique(mask)) == {0.0, 1.0}
        assert abs((mask < 0.5).mean() - 0.407) < 0.001
    else:                       # Lanczos at 512: soft edges, as upstream's
        assert len(np.unique(mask)) > 100
    # the described geometry
    r = size // 256
    assert mask[:90 * r].min() == 1.0  # upper face kept
    assert mask[110 * r, 40 * r] == 0.0 and mask[110 * r, 210 * r] == 0.0  # cheeks regenerated
    assert mask[110 * r, 128 * r] == 1.0  # nose notch kept
    assert mask[200 * r, 128 * r] == 0.0 and mask[250 * r, 128 * r] == 1.0  # jaw regenerated, below kept
    assert mask[200 * r, 5 * r] == 1.0 and mask[240 * r, 30 * r] == 1.0  # rounded jaw corners kept


def test_official_mask_found_in_a_latentsync_checkout(tmp_path):
    from lipgraph.vision.latentsync_mask import find_official_mask
    checkout = tmp_path / "LatentSync"
    (checkout / "latentsync" / "utils").mkdir(parents=True)
    (checkout / "checkpoints").mkdir()
    png = checkout / "latentsync" / "utils" / "mask.png"
    png.write_bytes(open(MASK_PNG, "rb").read())
    assert find_official_mask(str(checkout)) == str(png)
    assert find_official_mask(str(checkout / "checkpoints")) == str(png)
    assert find_official_mask(str(tmp_path)) == "" and find_official_mask("") == ""


def test_load_mask(tmp_path):
    path = tmp_path / "m.png"
    img = np.full((128, 128, 3), 255, np.uint8)
    img[64:] = 0
    cv2.imwrite(str(path), img)
    m = load_mask(str(path), 256)
    assert m.shape == (256, 256) and m.dtype == np.float32
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert m[:120].mean() > 0.99 and m[136:].mean() < 0.01
    ref = load_mask(MASK_PNG, 256)
    np.testing.assert_array_equal(ref < 0.5, _reference_mask(256) < 0.5)

    with pytest.raises(MaskFileError, match="nope.png"):
        load_mask(str(tmp_path / "nope.png"), 256)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(MaskFileError, match="junk.png"):
        load_mask(str(junk), 256)


def test_masked_image_sets_gray():
    mask = latentsync_mask(256)
    face = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = masked_image(face, mask)
    assert out.dtype == np.float32 and out.shape == face.shape
    assert np.all(out[mask == 0] == 0.0)  # 0 in [-1, 1] = gray 127.5
    np.testing.assert_allclose(out[mask == 1], face[mask == 1] / 127.5 - 1, atol=1e-6)

    batch = torch.rand(2, 3, 256, 256) * 2 - 1
    tout = masked_image(batch, torch.from_numpy(mask)[None])
    assert tout.shape == batch.shape
    keep = torch.from_numpy(mask).bool()
    assert torch.all(tout[:, :, ~keep] == 0) and torch.equal(tout[:, :, keep], batch[:, :, keep])
    with pytest.raises(ValueError):
        masked_image(face[:100], mask)


def test_keep_surroundings():
    mask = latentsync_mask(64)
    gen, orig = -np.ones((64, 64, 3), np.float32), np.ones((64, 64, 3), np.float32)
    out = keep_surroundings(gen, orig, mask)
    assert np.all(out[mask == 0] == -1) and np.all(out[mask == 1] == 1)


def test_latent_mask_nearest():
    mask = latentsync_mask(256)
    for size in (32, 64, 20):
        out = latent_mask(mask, size)
        ref = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None], size=(size, size))[0]
        assert out.shape == (1, size, size)
        np.testing.assert_array_equal(out, ref.numpy())
    soft = torch.from_numpy(latentsync_mask(512))[None]
    t = latent_mask(soft, (64, 64))
    assert isinstance(t, torch.Tensor) and t.shape == (1, 64, 64)
    torch.testing.assert_close(t, torch.nn.functional.interpolate(soft[None], size=(64, 64))[0],
                               rtol=0, atol=0)
    # as upstream: nearest samples of the soft 512 mask, a few of them between 0 and 1
    between = ((t > 0) & (t < 1)).float().mean().item()
    assert 0.01 < between < 0.06


# --------------------------------------------------------------------------- alignment


def test_box_and_template_sizes():
    assert face_box_size(256) == (210, 280)  # width x height
    assert face_box_size(512) == (420, 560)
    np.testing.assert_allclose(template_points(256), [[47.6, 56.0], [162.4, 56.0], [105.0, 112.0]])
    np.testing.assert_allclose(template_points(512), 2 * template_points(256))


def test_template_onto_itself_is_identity():
    for res in (256, 512):
        lm = _landmarks_from_three(template_points(res))
        np.testing.assert_allclose(three_points(lm), template_points(res))
        np.testing.assert_allclose(estimate_affine(lm, res), [[1, 0, 0], [0, 1, 0]], atol=1e-9)


def test_similarity_recovers_known_transform():
    tpl = template_points(256)
    rot, scale, shift = _rotation(12.0), 0.6, np.array([300.0, -40.0])
    src = (tpl @ rot.T) * scale + shift  # template seen rotated, scaled and moved in a frame
    matrix, bias = similarity_transform(src, tpl)
    mapped = src @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, tpl, atol=1e-9)
    # upstream's translation term is small (normalised units): 0.2 px here
    assert 0.05 < np.linalg.norm(bias) < 0.5
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((3, 2)), tpl)


def test_reflection_never_chosen():
    tpl = template_points(256)
    mirrored = tpl * [-1, 1]  # brows swapped left/right
    matrix, _ = similarity_transform(mirrored, tpl)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_smoother_landmarks():
    rng = np.random.default_rng(0)
    base = box_landmarks((100, 100, 300, 300)).astype(np.float64)
    smoother = AlignmentSmoother()
    first = smoother.landmarks(base)
    np.testing.assert_array_equal(first, base)  # first frame passes through

    raw, smooth = [base], [first]
    for _ in range(30):
        noisy = base + rng.normal(0, 1.0, base.shape)
        raw.append(noisy)
        smooth.append(smoother.landmarks(noisy))
    jitter = lambda seq: np.mean([np.abs(b - a).mean() for a, b in zip(seq, seq[1:])])  # noqa: E731
    assert jitter(smooth) < 0.25 * jitter(raw)

    jumped = base + 60.0  # real motion passes through
    np.testing.assert_allclose(smoother.landmarks(jumped), jumped, atol=0.01)

    smoother.reset()  # a cut: no memory of the previous shot
    other = base * 0.5 + 7
    np.testing.assert_array_equal(smoother.landmarks(other), other)


def test_smoother_bias_and_affine_jitter():
    smoother = AlignmentSmoother()
    np.testing.assert_allclose(smoother.bias(np.array([1.0, 0.0])), [1.0, 0.0])
    np.testing.assert_allclose(smoother.bias(np.array([0.0, 1.0])), [0.2, 0.8])
    smoother.reset()
    np.testing.assert_allclose(smoother.bias(np.array([0.0, 1.0])), [0.0, 1.0])

    # frame-to-frame motion of the aligned face under landmark jitter of a still face
    rng = np.random.default_rng(1)
    base = box_landmarks((150, 80, 330, 260)).astype(np.float64)
    probe = np.array([[160.0, 90.0], [240.0, 170.0], [320.0, 250.0]])  # frame points across the face
    raw, smooth, smoother = [], [], AlignmentSmoother()
    for _ in range(25):
        lm = base + rng.normal(0, 1.0, base.shape)
        for out, m in ((raw, estimate_affine(lm, 256)), (smooth, estimate_affine(lm, 256, smoother))):
            out.append(probe @ m[:, :2].T + m[:, 2])
    shake = lambda seq: np.mean([np.abs(b - a).mean() for a, b in zip(seq, seq[1:])])  # noqa: E731
    assert shake(smooth) < 0.5 * shake(raw)


def _far_from(affine: np.ndarray, resolution: int, shape, margin: int = 12) -> np.ndarray:
    """Pixels farther than ``margin`` from the face box warped into the frame."""
    bw, bh = face_box_size(resolution)
    inv = cv2.invertAffineTransform(affine)
    reach = cv2.warpAffine(np.ones((bh, bw), np.uint8), inv, (shape[1], shape[0]))
    reach = cv2.dilate(reach, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return reach == 0


@pytest.mark.parametrize("resolution", [256, 512])
def test_astronaut_round_trip(resolution):
    frame = data.astronaut()
    affine = estimate_affine(box_landmarks(ASTRONAUT_BOX), resolution)
    face = align_face(frame, affine, resolution)
    assert face.shape == (resolution, resolution, 3) and face.dtype == np.uint8
    # the face fills the aligned image: not gray fill, brows near template height
    assert np.abs(face.astype(int) - 127).mean() > 20

    back = restore_face(frame, face, affine, resolution)
    assert back.shape == frame.shape and back.dtype == np.uint8
    err = np.abs(back.astype(int) - frame.astype(int)).max(-1)
    x1, y1, x2, y2 = ASTRONAUT_BOX
    in_box = err[y1:y2, x1:x2]
    assert in_box.mean() < 1.0 and np.percentile(in_box, 99) <= 3

    # the region the model keeps (mask == 1) and the regenerated region both survive unchanged
    mask = latentsync_mask(resolution)
    bw, bh = face_box_size(resolution)
    keep_box = cv2.resize(mask, (bw, bh), interpolation=cv2.INTER_NEAREST)
    keep = cv2.warpAffine(keep_box, cv2.invertAffineTransform(affine), frame.shape[1::-1], flags=cv2.INTER_NEAREST)
    in_box_mask = np.zeros(err.shape, bool)
    in_box_mask[y1:y2, x1:x2] = True
    assert err[in_box_mask & (keep > 0.5)].mean() < 1.0

    far = _far_from(affine, resolution, frame.shape)
    assert far.mean() > 0.8
    np.testing.assert_array_equal(back[far], frame[far])


def test_restore_applies_new_face_inside_only():
    frame = data.astronaut()
    affine = estimate_affine(box_landmarks(ASTRONAUT_BOX), 256)
    face = align_face(frame, affine, 256)
    face[160:220, 80:176] = (0, 255, 0)  # a green mouth patch
    back = restore_face(frame, face, affine, 256)
    inv = cv2.invertAffineTransform(affine)
    centre = np.array([128 * 210 / 256, 190 * 280 / 256]) @ inv[:, :2].T + inv[:, 2]
    cx, cy = np.round(centre).astype(int)
    assert back[cy, cx, 1] > 200 and back[cy, cx, 0] < 60
    far = _far_from(affine, 256, frame.shape)
    np.testing.assert_array_equal(back[far], frame[far])


def _restore_full_frame(frame, face_res, affine, resolution):
    """Direct full-frame version of the documented paste-back, to check the cropped computation."""
    h, w = frame.shape[:2]
    bw, bh = face_box_size(resolution)
    inv = cv2.invertAffineTransform(affine)
    box = cv2.resize(face_res.astype(np.float32), (bw, bh), interpolation=cv2.INTER_LANCZOS4)
    warped = cv2.warpAffine(box, inv, (w, h), flags=cv2.INTER_LANCZOS4)
    mask = cv2.erode(cv2.warpAffine(np.ones((bh, bw), np.float32), inv, (w, h)), np.ones((2, 2), np.uint8))
    edge = int(float(mask.sum()) ** 0.5) // 20
    centre = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
    soft = cv2.GaussianBlur(centre, (2 * edge + 1, 2 * edge + 1), 0)[:, :, None]
    out = soft * (mask[:, :, None] * warped) + (1 - soft) * frame.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "crop, runs_off",
    [
        ((slice(31, 332), slice(120, 397)), False),  # odd size, face inside
        ((slice(85, 300), slice(195, 451)), True),  # face box runs off the top-left corner
    ],
)
def test_odd_frames_and_edges(crop, runs_off):
    frame = np.ascontiguousarray(data.astronaut()[crop])
    oy, ox = crop[0].start, crop[1].start
    box = (ASTRONAUT_BOX[0] - ox, ASTRONAUT_BOX[1] - oy, ASTRONAUT_BOX[2] - ox, ASTRONAUT_BOX[3] - oy)
    affine = estimate_affine(box_landmarks(box), 256)
    face = align_face(frame, affine, 256)
    assert face.shape == (256, 256, 3)
    back = restore_face(frame, face, affine, 256)
    assert back.shape == frame.shape
    np.testing.assert_array_equal(back, _restore_full_frame(frame, face, affine, 256))
    far = _far_from(affine, 256, frame.shape)
    np.testing.assert_array_equal(back[far], frame[far])
    # outside the frame the aligned face is gray 127
    assert np.all(face[:8, :8] == 127) == runs_off


def test_input_validation():
    frame = data.astronaut()
    affine = estimate_affine(box_landmarks(ASTRONAUT_BOX), 256)
    with pytest.raises(ValueError, match="256 x 256 x 3"):
        restore_face(frame, np.zeros((512, 512, 3), np.uint8), affine, 256)
    with pytest.raises(ValueError):
        align_face(frame[:, :, 0], affine, 256)
    with pytest.raises(ValueError, match="68"):
        three_points(np.zeros((5, 2)))
