import cv2
import numpy as np
import pytest
from skimage import data

from lipgraph.vision.musetalk_face import (
    blend_mask,
    blur_kernel_size,
    crop_face,
    crop_padded,
    expanded_crop_box,
    face_box,
    parsing_region,
    paste_face,
    reuse_mask,
)

SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP, NECK, HAIR = 1, 10, 11, 12, 13, 14, 17
# Astronaut's face (S3FD-like box); the frame is 512 x 512 RGB.
ASTRONAUT_DET = (180.0, 65.5, 285.9, 205.0)


def hand_parsing():
    """512 x 512 class map: skin ellipse with nose, lips, mouth; neck below; hair on top."""
    m = np.zeros((512, 512), np.uint8)
    cv2.rectangle(m, (100, 0), (412, 120), HAIR, -1)
    cv2.rectangle(m, (190, 430), (322, 511), NECK, -1)
    cv2.ellipse(m, (256, 256), (150, 200), 0, 0, 360, SKIN, -1)  # rows 56..456, cols 106..406
    cv2.ellipse(m, (256, 250), (25, 50), 0, 0, 360, NOSE, -1)
    cv2.ellipse(m, (256, 330), (60, 12), 0, 0, 360, UPPER_LIP, -1)
    cv2.ellipse(m, (256, 352), (60, 12), 0, 0, 360, LOWER_LIP, -1)
    cv2.ellipse(m, (256, 341), (40, 5), 0, 0, 360, MOUTH, -1)
    return m


@pytest.fixture(scope="module")
def frame():
    return np.ascontiguousarray(data.astronaut())


def test_face_box_margin_and_clamping():
    assert face_box((10, 20, 100, 200), (480, 640, 3)) == (10, 20, 100, 210)
    assert face_box((10.9, 20.2, 100.7, 200.99), (480, 640)) == (10, 20, 100, 210)
    assert face_box((10, 20, 100, 200), (480, 640), extra_margin=0) == (10, 20, 100, 200)
    # Clamped on every side; the margin never leaves the frame.
    assert face_box((-5, -3, 700, 475), (480, 640)) == (0, 0, 640, 480)
    assert face_box((600, 470, 639, 479), (480, 640)) == (600, 470, 639, 480)
    for v in (face_box((-5, -3, 700, 475), (480, 640)), face_box((1, 2, 3, 4), (5, 5))):
        assert all(isinstance(c, int) for c in v)
    with pytest.raises(ValueError, match="does not overlap"):
        face_box((700, 10, 800, 100), (480, 640))
    with pytest.raises(ValueError, match="does not overlap"):
        face_box((50, 50, 40, 60), (480, 640))
    with pytest.raises(ValueError, match="finite"):
        face_box((0, float("nan"), 10, 10), (480, 640))


def test_crop_face(frame):
    box = face_box(ASTRONAUT_DET, frame.shape)
    face = crop_face(frame, box)
    assert face.shape == (256, 256, 3) and face.dtype == np.uint8
    x1, y1, x2, y2 = box
    np.testing.assert_array_equal(
        face, cv2.resize(frame[y1:y2, x1:x2], (256, 256), interpolation=cv2.INTER_LANCZOS4))
    assert crop_face(frame, box, size=64).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="inside"):
        crop_face(frame, (500, 10, 520, 40))


def test_expanded_crop_box_follows_upstream_rule():
    # w = 120, h = 180: centre (230, 150), half side int(90 * 1.5) = 135.
    assert expanded_crop_box((170, 60, 290, 240), (512, 512)) == (95, 15, 365, 285)
    # Not clamped: the square may leave the frame.
    assert expanded_crop_box((0, 0, 150, 190), (512, 512)) == (-67, -47, 217, 237)
    # Tiny boxes still get a square covering them.
    for box in [(5, 5, 6, 6), (0, 0, 3, 2), (7, 3, 8, 9)]:
        xs, ys, xe, ye = expanded_crop_box(box, (10, 10))
        assert xe - xs == ye - ys >= 2
        assert xs <= box[0] and ys <= box[1] and xe >= box[2] and ye >= box[3]


def test_crop_padded_is_black_outside(frame):
    crop = crop_padded(frame, (-10, -20, 30, 40))
    assert crop.shape == (60, 40, 3)
    assert not crop[:20].any() and not crop[:, :10].any()
    np.testing.assert_array_equal(crop[20:, 10:], frame[:40, :30])
    assert not crop_padded(frame, (600, 600, 610, 620)).any()


def test_parsing_region_modes():
    p = hand_parsing()
    raw, neck, jaw = (parsing_region(p, m) > 0 for m in ("raw", "neck", "jaw"))
    for region in (raw, neck, jaw):
        assert region[330, 256] and region[352, 256] and region[341, 256]  # lips and mouth
        assert not region[30, 256]  # hair
    # raw: skin, mouth, lips; nose, neck and background excluded.
    assert raw[200, 150] and not raw[250, 256] and not raw[490, 256] and not raw[300, 20]
    # neck adds the neck.
    assert neck[490, 256] and not raw[490, 256]
    np.testing.assert_array_equal(neck & ~np.isin(p, [NECK]), raw)
    # jaw: nose excluded, even where the grown skin covers it (just above the skin below it).
    assert p[296, 256] == NOSE and not jaw[296, 256]
    assert not jaw[250, 256]
    # The skin grows a few px below the chin (not beyond ~6 px).
    chin = 456  # last skin row at the centre column
    assert p[chin, 256] == SKIN and p[chin + 1, 256] != SKIN
    assert jaw[chin + 4, 256] and not raw[chin + 4, 256]
    assert not jaw[chin + 10, 256]
    # jaw: on the cheek sides (beyond 90 px from the centre) the edge is eroded inwards.
    row = 256
    skin_cols = np.nonzero(p[row] == SKIN)[0]
    left = skin_cols.min()
    assert left < 256 - 90
    assert raw[row, left + 5] and not jaw[row, left + 5]
    assert jaw[row, 256 - 60]
    with pytest.raises(ValueError, match="mode"):
        parsing_region(p, "cheeks")


def test_jaw_growth_shape():
    # One skin pixel in the centre band grows into the reflected cone: 16 px up, 6 px down
    # (narrowing to a point), 10 px sideways.
    p = np.zeros((512, 512), np.uint8)
    p[256, 256] = SKIN
    jaw = parsing_region(p, "jaw") > 0
    ys, xs = np.nonzero(jaw)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (240, 262, 246, 266)
    assert jaw[256 + 6, 256] and not jaw[256 + 6, 255]
    assert jaw[245, 246:267].all()
    # On the cheek sides the same pixel is eroded away entirely.
    p[256, 256], p[256, 60] = 0, SKIN
    assert not parsing_region(p, "jaw").any()
    # Narrower cheek bands (larger widths) keep it.
    assert parsing_region(p, "jaw", left_cheek_width=200).any()


def test_parsing_region_accepts_other_sizes():
    p = hand_parsing()
    small = cv2.resize(p, (256, 256), interpolation=cv2.INTER_NEAREST)
    region = parsing_region(small, "raw")
    assert region.shape == (512, 512)
    assert (region > 0).mean() == pytest.approx((parsing_region(p, "raw") > 0).mean(), abs=0.01)


def test_blur_kernel_size():
    assert blur_kernel_size(270) == 13
    assert blur_kernel_size(270, 0.1) == 27
    assert blur_kernel_size(10) == 1


def test_blend_mask_cut_and_feather(frame):
    box = face_box(ASTRONAUT_DET, frame.shape)
    crop_box = expanded_crop_box(box, frame.shape)
    xs, ys, xe, ye = crop_box
    mask = blend_mask(hand_parsing(), box, crop_box, "jaw")
    assert mask.shape == (ye - ys, xe - xs) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    k = blur_kernel_size(xe - xs)
    top = (ye - ys) // 2
    x1, x2, y2 = box[0] - xs, box[2] - xs, box[3] - ys
    # Nothing above the cut line or outside the face box, beyond the blur's reach.
    assert not mask[: top - k // 2].any()
    assert not mask[:, : x1 - k // 2].any() and not mask[:, x2 + k // 2 + 1:].any()
    assert not mask[y2 + k // 2 + 1:].any()
    # Fully on at the lips, soft at the cut line.
    lips = (int(0.645 * (ye - ys)), (xe - xs) // 2)
    assert mask[lips] == pytest.approx(1.0)
    cheek = int(0.35 * (xe - xs))  # skin, left of the nose
    assert 0.0 < mask[top, cheek] < 1.0 and mask[top + k, cheek] == 1.0
    # A wider feather with the realtime ratio.
    wide = blend_mask(hand_parsing(), box, crop_box, "jaw", blur_ratio=0.1)
    assert (wide > 0).sum() > (mask > 0).sum()


def test_blend_mask_without_parsing(frame):
    box = face_box(ASTRONAUT_DET, frame.shape)
    crop_box = expanded_crop_box(box, frame.shape)
    xs, ys, xe, ye = crop_box
    mask = blend_mask(None, box, crop_box)
    assert mask.shape == (ye - ys, xe - xs) and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    top = (ye - ys) // 2
    k = blur_kernel_size(xe - xs)
    assert not mask[: top - k // 2].any()
    cx = (box[0] + box[2]) // 2 - xs
    assert mask[top + (box[3] - ys - top) // 2, cx] == pytest.approx(1.0)  # mid lower face


def test_paste_face_changes_only_inside_mask(frame):
    box = face_box(ASTRONAUT_DET, frame.shape)
    crop_box = expanded_crop_box(box, frame.shape)
    xs, ys, xe, ye = crop_box
    mask = blend_mask(hand_parsing(), box, crop_box, "jaw")
    face = np.full((256, 256, 3), (0, 255, 0), np.uint8)  # nothing like the real face
    out = paste_face(frame, face, box, crop_box, mask)
    assert out.shape == frame.shape and out.dtype == np.uint8
    changed = (out != frame).any(-1)
    full_mask = np.zeros(frame.shape[:2], np.float32)
    full_mask[ys:ye, xs:xe] = mask
    assert not changed[full_mask == 0].any()
    assert changed[full_mask > 0.5].all()
    x1, y1, x2, y2 = box
    inside = np.zeros_like(changed)
    inside[y1:y2, x1:x2] = True
    assert not changed[~inside].any()
    # Where the mask is 1 the pixel is the generated face's.
    on = full_mask == 1.0
    assert on.sum() > 1000
    np.testing.assert_array_equal(out[on], np.broadcast_to([0, 255, 0], out[on].shape))
    # The input frame is left alone.
    assert (frame == data.astronaut()).all()


def test_paste_face_full_mask_writes_resized_face(frame):
    box = (100, 120, 161, 200)
    crop_box = expanded_crop_box(box, frame.shape)
    xs, ys, xe, ye = crop_box
    mask = np.ones((ye - ys, xe - xs), np.float32)
    face = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = paste_face(frame, face, box, crop_box, mask)
    np.testing.assert_array_equal(out[120:200, 100:161], cv2.resize(face, (61, 80)))
    outside = np.ones(frame.shape[:2], bool)
    outside[120:200, 100:161] = False
    np.testing.assert_array_equal(out[outside], frame[outside])
    with pytest.raises(ValueError, match="mask shape"):
        paste_face(frame, face, box, crop_box, mask[1:])


@pytest.mark.parametrize("frame_hw", [(37, 53), (480, 640), (101, 99)])
@pytest.mark.parametrize("det", [
    (-20, -20, 30, 40),     # top-left corner, partly outside
    (10, -5, 45, 1000),     # taller than the frame
    (40, 20, 1000, 36),     # right edge
    (0, 0, 1, 1),           # a single pixel
    (5.5, 6.5, 8.0, 7.0),   # 2 x 1 after truncation
    (-1000, -1000, 5000, 5000),
])
@pytest.mark.parametrize("use_parsing", [True, False])
def test_pipeline_on_edge_and_tiny_boxes(frame_hw, det, use_parsing):
    h, w = frame_hw
    img = cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_AREA)
    box = face_box(det, img.shape)
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    face_in = crop_face(img, box)
    assert face_in.shape == (256, 256, 3)
    crop_box = expanded_crop_box(box, img.shape)
    crop = crop_padded(img, crop_box)
    parsing = hand_parsing() if use_parsing else None
    mask = blend_mask(parsing, box, crop_box, "jaw")
    assert mask.shape == crop.shape[:2]
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    out = paste_face(img, 255 - face_in, box, crop_box, mask)
    assert out.shape == img.shape
    outside = np.ones((h, w), bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], img[outside])


def face_labels(shape, box):
    """Frame-sized class map of a face drawn relative to ``box`` (it moves and scales with it)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    m = np.zeros(shape, np.uint8)

    def pt(u, v):
        return int(round(x1 + u * w)), int(round(y1 + v * h))

    def ax(a, b):
        return max(1, int(round(a * w))), max(1, int(round(b * h)))

    cv2.ellipse(m, pt(0.5, 0.45), ax(0.48, 0.5), 0, 0, 360, SKIN, -1)
    cv2.ellipse(m, pt(0.5, 0.45), ax(0.1, 0.15), 0, 0, 360, NOSE, -1)
    cv2.ellipse(m, pt(0.5, 0.72), ax(0.2, 0.06), 0, 0, 360, UPPER_LIP, -1)
    return m


def parse_crop(labels, crop_box):
    """What a perfect parser would return for the expanded crop."""
    return cv2.resize(crop_padded(labels, crop_box), (512, 512), interpolation=cv2.INTER_NEAREST)


def test_reuse_mask_follows_the_box(frame):
    shape = frame.shape[:2]
    old = (180, 70, 290, 215)
    old_crop = expanded_crop_box(old, shape)
    mask = blend_mask(parse_crop(face_labels(shape, old), old_crop), old, old_crop)
    # Same box: the same mask.
    np.testing.assert_array_equal(reuse_mask(mask, old, old_crop, old, old_crop), mask)
    # A pure shift moves the crop box with it: the mask is unchanged in crop coordinates.
    moved = (190, 66, 300, 211)
    moved_crop = expanded_crop_box(moved, shape)
    np.testing.assert_array_equal(reuse_mask(mask, old, old_crop, moved, moved_crop), mask)
    # The face moved and changed size and aspect with its box: the reused mask is close to
    # a freshly parsed one, and closer than stretching the mask to the new crop.
    for new in [(150, 70, 320, 215), (185, 75, 285, 200), (160, 40, 330, 250)]:
        new_crop = expanded_crop_box(new, shape)
        fresh = blend_mask(parse_crop(face_labels(shape, new), new_crop), new, new_crop)
        reused = reuse_mask(mask, old, old_crop, new, new_crop)
        assert reused.shape == fresh.shape and reused.dtype == np.float32
        assert 0.0 <= reused.min() and reused.max() <= 1.0
        stretched = cv2.resize(mask, fresh.shape[::-1])
        err = np.abs(reused - fresh).mean()
        assert err < 0.012
        assert err < np.abs(stretched - fresh).mean()
    with pytest.raises(ValueError, match="old crop box"):
        reuse_mask(mask[1:], old, old_crop, moved, moved_crop)
