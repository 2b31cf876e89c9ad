"""One dub per speaker (`--dub ID=AUDIO`): every chosen face of a frame dubbed with its own
audio in the same pass through the models, the faces pasted back into one frame, the rest of
the frame untouched, the soundtrack the dubs' mix; on both graphs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lipgraph.graph.items import Batch, Flush, Item
from lipgraph.media.dubs import parse_dubs, write_mix
from lipgraph.tools.ab_runs import faces_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the right person is away for frames 8-35: over a second, so their track ends and a new one
# starts when they return
PATTERN = "F" * 48 + "C" * 6 + "F" * 10
AWAY = (8, 35)


def tone(seconds, freq, rate=16000, every=0.0):
    t = np.arange(int(seconds * rate)) / rate
    env = 0.5 * (1 + np.sin(2 * np.pi * (every or 3.0) * t))
    return (0.4 * env * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_parse_dubs(tmp_path):
    assert parse_dubs(["2=a.wav", "5 = b.wav"]) == {2: "a.wav", 5: "b.wav"}
    assert parse_dubs({3: "c.wav"}) == {3: "c.wav"}
    spec = tmp_path / "dubs.yaml"
    spec.write_text("1: one.wav\n4: sub/four.wav\n")
    assert parse_dubs([str(spec)]) == {1: str(tmp_path / "one.wav"), 4: str(tmp_path / "sub/four.wav")}
    for bad, why in ((["x=a.wav"], "track id"), (["0=a.wav"], "start at 1"),
                     (["2=a.wav", "2=b.wav"], "two dubs"), (["2="], "ID=AUDIO"),
                     ([str(tmp_path / "none.yaml")], "cannot read")):
        with pytest.raises(ValueError, match=why):
            parse_dubs(bad)


def test_the_mix_is_the_sum_of_the_dubs(tmp_path):
    from lipgraph.media.audio import read_audio
    from lipgraph.tools.synthetic import write_wav
    a, b = tone(1.0, 220), tone(1.5, 330)
    write_wav(str(tmp_path / "a.wav"), a)
    write_wav(str(tmp_path / "b.wav"), b)
    write_mix([str(tmp_path / "a.wav"), str(tmp_path / "b.wav")], str(tmp_path / "mix.wav"))
    got = read_audio(str(tmp_path / "mix.wav"))
    want = np.pad(a, (0, len(b) - len(a))) + b
    assert len(got) == len(want)                              # as long as the longest dub
    assert np.abs(got - want).max() < 2e-3                    # 16-bit rounding only
    # a sum that would clip is scaled as a whole, never clipped
    write_wav(str(tmp_path / "loud.wav"), tone(1.0, 220) * 2.2)
    write_mix([str(tmp_path / "loud.wav")] * 2, str(tmp_path / "loud_mix.wav"))
    loud = read_audio(str(tmp_path / "loud_mix.wav"))
    assert 0.97 < np.abs(loud).max() <= 1.0
    ref = tone(1.0, 220)
    assert abs(np.corrcoef(loud, ref)[0, 1]) > 0.999


def test_lane_windows_keep_each_face_in_its_own_windows():
    """LatentSync windows with two faces per frame: each window holds one track's consecutive
    frames; a track that leaves releases its window on the next frame."""
    from lipgraph.stages.batch_builder import LaneWindows
    router = LaneWindows(4)
    out = []
    for i in range(10):
        for tid in ((1, 2) if i < 6 else (1,)):           # track 2 leaves after frame 5
            out += router.add(Item(i, {"face_id": tid, "box": 1, "aligned": np.zeros(1)}))
    out += router.divert(Item(10, {"box": None}))
    windows = [(m.data["n_context"], [(it.index, it.data["face_id"]) for it in m.items])
               for port, m in out if port == "main" and isinstance(m, Batch)]
    for _, members in windows:
        assert len({tid for _, tid in members}) == 1
        idx = [i for i, _ in members]
        assert idx == list(range(idx[0], idx[0] + len(idx)))
    per_track = {tid: sorted(i for _, m in windows for i, t in m if t == tid) for tid in (1, 2)}
    assert per_track == {1: list(range(10)), 2: list(range(6))}     # every frame once
    # track 2's tail (frames 4-5) was released when frame 7 came, not at the cutaway
    order = [m for _, m in windows]
    assert order.index([(4, 2), (5, 2)]) < order.index([(8, 1), (9, 1)])
    assert [type(m).__name__ for p, m in out[-2:]] == ["Flush", "Item"]


def test_face_join_pastes_every_face_and_keeps_the_rest():
    from lipgraph.stages.face_join import FaceJoin

    class Ctx:
        def __init__(self):
            self.counts = {}

        def count(self, key, n=1, reason=None):
            self.counts[key] = self.counts.get(key, 0) + n

    join = FaceJoin("join", {}, Ctx())
    join.open()
    base = np.zeros((20, 30, 3), np.uint8)

    def face(index, slot, slots, x, value):
        frame = base.copy()
        frame[2:6, x:x + 4] = value
        data = {"frame": frame, "box": np.array([x, 2, x + 4, 6, 1.0]), "face_id": slot + 1,
                "edit": [x, 2, x + 4, 6], "model": "musetalk"}
        if slots > 1:
            data.update(face_slot=slot, face_slots=slots)
        return Item(index, data)

    out = list(join.process(Batch([face(0, 0, 2, 1, 50), face(0, 1, 2, 20, 90),
                                   face(1, 0, 2, 1, 60)]), "in"))
    assert [m.index for _, m in out] == [0]                  # frame 1 waits for its second face
    out += list(join.process(Batch([face(1, 1, 2, 20, 70), face(2, 0, 1, 5, 30)]), "in"))
    assert [m.index for _, m in out] == [0, 1, 2]
    f0 = out[0][1].data["frame"]
    want = base.copy()
    want[2:6, 1:5], want[2:6, 20:24] = 50, 90
    assert (f0 == want).all()
    assert [f["id"] for f in out[0][1].data["faces"]] == [1, 2] and "faces" not in out[2][1].data
    assert "face_slots" not in out[1][1].data
    # frames of one face pass through as they came, batches whole
    single = Batch([face(3, 0, 1, 1, 10), face(4, 0, 1, 1, 10)])
    assert list(join.process(single, "in")) == [("out", single)]
    assert list(join.on_flush(Flush(5), "in"))[0][1].before == 5
    assert list(join.process(Batch([face(6, 0, 2, 1, 1)]), "in")) == []    # its 2nd face never comes
    with pytest.raises(RuntimeError, match="wait for some of their faces"):
        list(join.finish())


# ----- end to end --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def people(tmp_path_factory):
    from lipgraph.tools.faces import list_faces
    from lipgraph.tools.synthetic import write_wav
    from lipgraph.tools.synthetic_faces import make_people_clip, two_people
    folder = tmp_path_factory.mktemp("dubs")
    video, _, truth = make_people_clip(str(folder), PATTERN, two_people(away=AWAY))
    listing = list_faces(video, str(folder / "faces"), "haar")
    seconds = len(PATTERN) / 25.0
    dubs = {"a": str(folder / "a.wav"), "b": str(folder / "b.wav")}
    write_wav(dubs["a"], tone(seconds, 200, every=3.0))
    write_wav(dubs["b"], tone(seconds - 0.4, 310, every=5.0))     # shorter: silence after
    left = [t["id"] for t in listing["tracks"] if t["mean_box"][0] < 320]
    right = [t["id"] for t in listing["tracks"] if t["mean_box"][0] > 320]
    return video, truth, dubs, left, right, str(folder)


def run_dubs(graph, video, out, side, dubs, sets, cache, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "run_graph.py"), graph, "--video", video,
           "--output", out, "--quiet", *extra]
    for tid, path in dubs.items():
        cmd += ["--dub", f"{tid}={path}"]
    for s in sets + ["mux.codec=ffv1", "mux.pix_fmt=bgr0", f"mux.sidecar={side}",
                     "video.length=video", "detect.detector=haar"]:
        cmd += ["--set", s]
    env = dict(os.environ, LIPGRAPH_CACHE=cache)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def check_output(video, out, side, truth, ids):
    """Every frame accounted for; cutaways and everything outside the dubbed faces' edit boxes
    bit-identical; each chosen face changed. Returns the rows and the output frames."""
    from lipgraph.media.video import VideoReader
    from lipgraph.tools.synthetic import read_id
    src = [f.image for f in VideoReader(video)]
    frames = [f.image for f in VideoReader(out)]
    rows = [json.loads(line) for line in open(side)]
    assert len(frames) == len(src) == len(rows) == len(PATTERN)
    changed = {"left": 0, "right": 0}
    for k, (frame, row) in enumerate(zip(frames, rows)):
        i = read_id(frame)
        assert i == k == row["index"]
        faces = faces_of(row)
        on = {name for name in truth[i]}
        assert len(faces) == len(on), (i, row)             # every person on the frame dubbed
        assert {ids[f["id"]] for f in faces} == on
        outside = np.ones(frame.shape[:2], bool)
        for f in faces:
            x0, y0, x1, y1 = f["edit"]
            outside[y0:y1, x0:x1] = False
            person = ids[f["id"]]
            changed[person] += bool((frame[y0:y1, x0:x1] != src[i][y0:y1, x0:x1]).any())
        assert not (frame != src[i])[outside].any(), f"frame {i}: a pixel outside the dubbed faces changed"
    assert changed["left"] >= 0.8 * sum("left" in t for t in truth)
    assert changed["right"] >= 0.8 * sum("right" in t for t in truth)
    return rows, frames


@pytest.mark.parametrize("graph", ["musetalk", pytest.param("surgical", marks=pytest.mark.slow)])
def test_two_dubs_on_two_faces(people, tmp_path, tiny_models, graph):
    from lipgraph.media.audio import read_audio
    from lipgraph.models.random_weights import tiny_latentsync
    from lipgraph.tools.synthetic import model_sets
    video, truth, dubs, left, right, folder = people
    latentsync = tiny_latentsync(str(tmp_path / "ls")) if graph == "surgical" else None
    sets = model_sets(tiny_models, latentsync=latentsync)
    ids = {**{t: "left" for t in left}, **{t: "right" for t in right}}
    out, side = str(tmp_path / "out.mkv"), str(tmp_path / "side.jsonl")
    given = {**{t: dubs["a"] for t in left}, **{t: dubs["b"] for t in right}}
    proc = run_dubs(graph, video, out, side, given, sets, str(tmp_path / "cache"))
    assert "the soundtrack is the mix of the" in proc.stderr
    rows, frames = check_output(video, out, side, truth, ids)
    both = [r for r in rows if r.get("faces")]
    assert len(both) == sum(len(t) == 2 for t in truth)
    assert all(len(r["faces"]) == 2 and r["faces"][0]["id"] == r["face_id"] for r in both)
    # the soundtrack: the two dubs mixed (b is shorter: a alone at the end)
    a, b = read_audio(dubs["a"]), read_audio(dubs["b"])
    mix = a + np.pad(b, (0, len(a) - len(b)))
    got = read_audio(out)[:len(mix)]
    assert abs(len(read_audio(out)) - len(mix)) <= 16000 / 25
    assert np.corrcoef(got, mix[:len(got)])[0, 1] > 0.98
    profile = json.load(open(out + ".profile.json"))
    counts = profile["stages"]["detect"]["counters"]
    assert sum(counts.get(f"frames_face_{t}", 0) for t in ids) == sum(len(t) for t in truth)
    assert profile["stages"]["join"]["counters"]["frames_with_several_faces"] == len(both)
    if graph != "musetalk":
        return
    # each face speaks its own dub: with `a` on the right face too, the left face is the same
    # to the bit and the right one differs
    out2, side2 = str(tmp_path / "out2.mkv"), str(tmp_path / "side2.jsonl")
    run_dubs(graph, video, out2, side2, {t: dubs["a"] for t in ids}, sets, str(tmp_path / "cache"),
             "--audio", dubs["a"])
    from lipgraph.media.video import VideoReader
    frames2 = [f.image for f in VideoReader(out2)]
    same = {"left": True, "right": True}
    for frame, frame2, row in zip(frames, frames2, rows):
        for f in faces_of(row):
            x0, y0, x1, y1 = f["edit"]
            same[ids[f["id"]]] &= bool((frame[y0:y1, x0:x1] == frame2[y0:y1, x0:x1]).all())
    assert same == {"left": True, "right": False}


@pytest.mark.slow
def test_a_split_run_tracks_the_same_faces(people, tmp_path, tiny_models):
    """Parts of a split (or resumed) run start mid-video; the track ids they dub are still the
    listing's, because the source decodes from the first frame for id tracking."""
    from lipgraph.media.video import VideoReader
    from lipgraph.tools.synthetic import model_sets
    video, truth, dubs, left, right, folder = people
    sets = model_sets(tiny_models) + ["mux.segment_s=0.4"]
    given = {**{t: dubs["a"] for t in left}, **{t: dubs["b"] for t in right}}
    outs = []
    for extra in ((), ("--parallel", "2")):
        out, side = str(tmp_path / f"out{len(outs)}.mkv"), str(tmp_path / f"side{len(outs)}.jsonl")
        run_dubs("musetalk", video, out, side, given, sets, str(tmp_path / "cache"), *extra)
        outs.append(([f.image for f in VideoReader(out)], [json.loads(x) for x in open(side)]))
    (whole, rows), (split, rows2) = outs
    assert rows == rows2
    assert all((a == b).all() for a, b in zip(whole, split)) and len(whole) == len(split)


def test_dub_errors(people, tmp_path):
    video, truth, dubs, left, right, folder = people
    base = [sys.executable, os.path.join(ROOT, "run_graph.py"), "musetalk", "--video", video,
            "--output", str(tmp_path / "o.mp4"), "--random-weights"]
    env = dict(os.environ, LIPGRAPH_CACHE=str(tmp_path / "cache"))
    missing = str(tmp_path / "gone.wav")
    cases = [(["--dub", f"1={missing}"], f"--dub 1={missing}"),
             (["--dub", "one=x.wav"], "track id"),
             (["--dub", f"1={dubs['a']}", "--dub", f"2={dubs['b']}", "--cache", str(tmp_path / "c")],
              "one face per frame")]
    for extra, why in cases:
        proc = subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr[-2000:]
        assert not os.path.exists(tmp_path / "o.mp4")
