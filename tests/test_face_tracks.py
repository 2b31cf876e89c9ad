"""Face tracks: detections linked across frames with stable ids, and the people listing."""
import json
import os

import numpy as np
import pytest

from lipgraph.vision.face_tracks import FaceTracker


def box(cx, cy, side=100, score=0.99):
    h = side / 2
    return [cx - h, cy - h, cx + h, cy + h, score]


def feed(tracker, frames):
    """frames: {index: [boxes]} in order; returns {index: {track id: box}}."""
    return {i: {tid: b for tid, b in tracker.update(i, bs)} for i, bs in frames.items()}


def test_two_faces_keep_their_ids_and_ids_go_left_to_right():
    t = FaceTracker()
    seen = feed(t, {i: [box(500 - 2 * i, 200), box(150 + 3 * i, 210)] for i in range(30)})
    assert all(set(s) == {1, 2} for s in seen.values())
    # id 1 is the left face on the first frame, and stays with it
    assert all(seen[i][1][0] < seen[i][2][0] for i in range(30))
    tracks = t.finish()
    assert [(tr.id, tr.first_frame, tr.last_frame, len(tr.frames)) for tr in tracks] == [(1, 0, 29, 30), (2, 0, 29, 30)]


def test_crossing_faces_are_told_apart_by_motion():
    t = FaceTracker()
    # two faces walking past each other; near the crossing they overlap strongly
    frames = {i: [box(100 + 10 * i, 200), box(500 - 10 * i, 220)] for i in range(40)}
    seen = feed(t, frames)
    left_start = seen[0][1][0]
    assert all(abs(seen[i][1][0] + 50 - (100 + 10 * i)) < 1e-3 for i in range(40)), "id 1 follows the face moving right"
    assert left_start < seen[39][1][0]


def test_a_face_lost_briefly_keeps_its_id_and_a_long_absence_makes_a_new_track():
    t = FaceTracker(max_lost=10)
    frames = {i: [box(200, 200)] + ([] if 10 <= i < 15 or 30 <= i < 50 else [box(500, 200)])
              for i in range(60)}
    feed(t, frames)
    tracks = t.finish()
    assert [tr.id for tr in tracks] == [1, 2, 3]
    assert tracks[1].ranges() == [[0, 9], [15, 29]]      # missed frames are not on the track
    assert tracks[2].first_frame == 50 and tracks[2].last_frame == 59


def test_a_shot_cut_ends_every_track():
    t = FaceTracker()
    feed(t, {i: [box(200, 200)] for i in range(10)})
    t.cut()
    feed(t, {i: [box(200, 200)] for i in range(10, 20)})
    tracks = t.finish()
    assert [(tr.id, tr.first_frame, tr.last_frame) for tr in tracks] == [(1, 0, 9), (2, 10, 19)]


def test_sparse_detection_fills_the_frames_between():
    t = FaceTracker()
    feed(t, {i: [box(200 + 4 * i, 200)] for i in range(0, 33, 8)})
    tr, = t.finish()
    assert tr.frames == list(range(33))
    assert np.allclose(tr.box_at(4)[:4], box(216, 200)[:4])     # interpolated


def test_fast_motion_between_sparse_detections_stays_one_track():
    t = FaceTracker()
    # 60 px per detection on a 100 px face: no overlap after the first step, but near and alike
    feed(t, {i: [box(100 + 60 * (i // 4), 200)] for i in range(0, 40, 4)})
    assert len(t.finish()) == 1


@pytest.fixture(scope="module")
def people_clip(tmp_path_factory):
    from lipgraph.tools.synthetic_faces import make_people_clip
    folder = tmp_path_factory.mktemp("people")
    # the right-hand person is away for frames 30-59; a cutaway run at 80-94
    pattern = "F" * 80 + "C" * 15 + "F" * 40
    video, _, truth = make_people_clip(str(folder), pattern)
    return video, truth


def _inside(b, head):
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return head[0] <= cx <= head[2] and head[1] <= cy <= head[3]


@pytest.mark.parametrize("every", ["1", "4"])
def test_listing_on_a_two_person_clip(people_clip, tmp_path, every):
    from lipgraph.tools.faces import format_table, list_faces
    video, truth = people_clip
    result = list_faces(video, str(tmp_path / "a"), "haar", detect_every=every)
    tracks = result["tracks"]
    # left person: 0-79 and 95-134 (the cutaway ends its track); right: 0-29, 60-79, 95-134
    spans = sorted((t["first_frame"], t["last_frame"]) for t in tracks)
    slack = 0 if every == "1" else int(every) - 1
    expected = [(0, 29), (0, 79), (60, 79), (95, 134), (95, 134)]
    assert len(spans) == len(expected)
    for (a, b), (ea, eb) in zip(sorted(spans), expected):
        assert ea <= a <= ea + slack and eb - slack <= b <= eb, (spans, expected)
    # every box of a track lies on one and the same person
    for t in tracks:
        with open(os.path.join(tmp_path / "a", "faces.json")) as f:
            assert json.load(f)["tracks"] == tracks
        first = truth[t["first_frame"]]
        owner = next(n for n, h in first.items() if _inside(t["mean_box"], h))
        for a, b in t["on"]:
            for i in range(a, b + 1):
                assert owner in truth[i], (t["id"], i)
    # the same video gives the same ids
    again = list_faces(video, str(tmp_path / "b"), "haar", detect_every=every)
    assert again["tracks"] == tracks
    assert os.path.getsize(tmp_path / "a" / "faces.png") > 1000
    table = format_table(result)
    assert table.splitlines()[0].startswith("5 face track(s) in 135 frames")


def test_listing_command(people_clip, tmp_path):
    import subprocess
    import sys
    video, _ = people_clip
    proc = subprocess.run([sys.executable, "-m", "lipgraph.tools.faces", video, str(tmp_path),
                           "--detector", "haar"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "face track(s)" in proc.stdout and (tmp_path / "faces.json").is_file()
    import cv2
    sheet = cv2.imread(str(tmp_path / "faces.png"))
    assert sheet.shape[1] == 5 * 128
    bad = subprocess.run([sys.executable, "-m", "lipgraph.tools.faces", str(tmp_path / "nope.mp4"),
                          str(tmp_path / "x"), "--detector", "haar"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope.mp4" in bad.stderr
