"""Choosing whom to dub (`--face`): by size, by a point, by the listing's track ids; frames
without the chosen face are cutaways; faces not chosen are never changed."""
import json
import os
import subprocess

import numpy as np
import pytest

from lipgraph.vision.face_choice import FaceChoice, parse_choice

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def box(cx, cy, side=100):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, 0.99]


def test_parse_choice():
    assert parse_choice("largest") == ("largest",)
    assert parse_choice("2") == ("ids", (2,)) and parse_choice("3, 1") == ("ids", (3, 1))
    assert parse_choice("0.25,0.5") == ("point", 0.25, 0.5)
    assert parse_choice("640.0,360.0") == ("point", 640.0, 360.0)
    for bad in ("", "x", "0", "1.5", "-0.1,0.5"):
        with pytest.raises(ValueError):
            parse_choice(bad)


def test_point_follows_its_face_as_it_leaves_the_point():
    c = FaceChoice(parse_choice("0.25,0.5"))
    c.size = (800, 400)
    chosen = []
    prev = None
    for i in range(40):
        # the left face walks right, far past the point; the right face stays put
        prev, _ = c.choose(i, [box(200 + 10 * i, 200), box(650, 200, 140)], prev)
        chosen.append(prev[0] + 50)
    assert chosen == [200 + 10 * i for i in range(40)]


def test_ids_pick_the_first_listed_present():
    c = FaceChoice(parse_choice("2,1"), max_lost=3)
    frames = {i: [box(200, 200)] + ([box(600, 200)] if i < 10 else []) for i in range(20)}
    got = [c.choose(i, b, None)[1] for i, b in frames.items()]
    assert got == [2] * 10 + [1] * 10


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    from lipgraph.tools.faces import list_faces
    from lipgraph.tools.synthetic_faces import make_people_clip
    folder = tmp_path_factory.mktemp("people")
    # 640x360: the left person (larger) and the right one, who is away for frames 30-59
    pattern = "F" * 80 + "C" * 10 + "F" * 20
    video, audio, truth = make_people_clip(str(folder), pattern)
    listing = list_faces(video, str(folder / "faces"), "haar")
    return video, audio, truth, listing


def _detect(video, face, every="1", extra=None):
    """The face_detect stage alone over the clip: (box, face_id) per frame."""
    from lipgraph.graph.items import Item
    from lipgraph.graph.stage import StageContext
    from lipgraph.media.video import VideoReader
    from lipgraph.stages.face_detect import FaceDetect

    class Ctx(StageContext):
        def __init__(self):
            self.counts = {}

        def count(self, key, amount=1, reason=None):
            self.counts[key] = self.counts.get(key, 0) + amount

        def warn(self, text):
            pass

    stage = FaceDetect("detect", {"detector": "haar", "face": face, "detect_every": every,
                                  "device": "cpu", **(extra or {})}, Ctx())
    stage.info = {"fps": 25.0}
    stage.open()
    out = []
    for f in VideoReader(video):
        out += [it for _, it in stage.process(Item(f.index, {"frame": f.image}, f.time), "in")]
    out += [it for _, it in stage.finish()]
    return [(it.data["box"], it.data.get("face_id")) for it in out], stage.ctx.counts


def _owner(b, truth_boxes):
    if b is None:
        return None
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return next(n for n, h in truth_boxes.items() if h[0] <= cx <= h[2] and h[1] <= cy <= h[3])


def test_choice_by_size_point_and_id(people):
    video, _, truth, listing = people
    tracks = {t["id"]: t for t in listing["tracks"]}
    right_ids = [t["id"] for t in listing["tracks"] if t["mean_box"][0] > 320]
    left_ids = [t["id"] for t in listing["tracks"] if t["mean_box"][0] < 320]
    # largest: the left person whenever there is one
    got, _ = _detect(video, "largest", every="auto")
    assert [_owner(b, t) for (b, _), t in zip(got, truth)] == [("left" if t else None) for t in truth]
    # a point on the right person: that person where present, a cutaway elsewhere
    got, _ = _detect(video, "0.72,0.45", every="auto")
    assert [_owner(b, t) for (b, _), t in zip(got, truth)] == [("right" if "right" in t else None) for t in truth]
    # the listing's ids: the first right-hand track only; then both right-hand tracks
    first = min(right_ids)
    got, counts = _detect(video, str(first))
    on = {i for a, b in tracks[first]["on"] for i in range(a, b + 1)}
    assert [_owner(b, t) for (b, _), t in zip(got, truth)] == [("right" if i in on else None) for i, t in enumerate(truth)]
    assert {fid for _, fid in got} == {first, None} and counts[f"frames_face_{first}"] == len(on)
    got, _ = _detect(video, ",".join(map(str, right_ids + left_ids)))
    # the right person where present, else the left one: every face frame has a face
    assert [_owner(b, t) for (b, _), t in zip(got, truth)] == [
        ("right" if "right" in t else "left" if t else None) for t in truth]


@pytest.mark.parametrize("graph", ["musetalk", "surgical"])
def test_unchosen_faces_and_frames_without_the_chosen_face_are_untouched(people, tmp_path, tiny_models, graph):
    from lipgraph.media.video import VideoReader
    from lipgraph.models.random_weights import tiny_latentsync
    from lipgraph.tools.synthetic import graph_command, model_sets, read_id
    video, audio, truth, listing = people
    latentsync = tiny_latentsync(str(tmp_path / "ls")) if graph == "surgical" else None
    right = min(t["id"] for t in listing["tracks"] if t["mean_box"][0] > 320)
    on = {i for t in listing["tracks"] if t["id"] == right for a, b in t["on"] for i in range(a, b + 1)}
    assert on and max(on) < 30             # the right person's first track, before leaving
    out, side = str(tmp_path / "out.mkv"), str(tmp_path / "side.jsonl")
    cmd = graph_command(graph, video, audio, out, model_sets(tiny_models, latentsync=latentsync) + [
        "mux.codec=ffv1", "mux.pix_fmt=bgr0", f"mux.sidecar={side}", "video.length=video",
        "detect.detector=haar"], "--quiet", "--face", str(right))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    src = [f.image for f in VideoReader(video)]
    rows = [json.loads(line) for line in open(side)]
    frames = [f.image for f in VideoReader(out)]
    assert len(frames) == len(src) == len(rows)
    changed = 0
    for frame, row in zip(frames, rows):
        i = read_id(frame)
        diff = (frame != src[i]).any(-1)
        left = truth[i].get("left")
        if i not in on:
            assert not diff.any(), f"frame {i} without the chosen face was changed"
            assert row["face"] is None
            continue
        assert row.get("face_id") == right, row
        if left is not None:
            x0, y0, x1, y1 = left.astype(int)
            assert not diff[max(y0, 0):y1, max(x0, 0):x1].any(), f"the unchosen face changed on frame {i}"
        ys, xs = np.nonzero(diff)
        if len(xs):
            changed += 1
            assert xs.min() >= 320, (i, xs.min())            # only the right half may change
    assert changed > 0


def speaker_clip(folder, turns=(100, 200), frames=300, fps=25.0):
    """Two people taking turns: the speaker's mouth opens with the clip's own speech, the
    listener's stays nearly shut. Returns the clip, its audio and who speaks on each frame."""
    from lipgraph.tools.synthetic import speech_at
    from lipgraph.tools.synthetic_faces import make_people_clip, two_people
    sr = 16000
    pcm = speech_at(np.arange(int(frames / fps * sr)) / sr)
    rms = np.array([np.sqrt(np.mean(pcm[int(i * sr / fps):int((i + 1) * sr / fps)] ** 2)) for i in range(frames)])
    who = ["left" if sum(i >= t for t in turns) % 2 == 0 else "right" for i in range(frames)]
    mouths = {p: np.where(np.array(who) == p, rms / rms.max(), 0.1) for p in ("left", "right")}
    video, audio, truth = make_people_clip(str(folder), "F" * frames, two_people(away=()),
                                           fps=fps, mouths=mouths, audio=pcm, name="talk")
    return video, who, truth


def test_speaker_follows_turn_taking(tmp_path):
    import av
    video, who, truth = speaker_clip(tmp_path)
    # the speech must be in the video file itself: mux the wav in
    with_audio = str(tmp_path / "talk_av.mkv")
    with av.open(video) as v, av.open(str(tmp_path / "talk.wav")) as a, av.open(with_audio, "w") as out:
        vs, as_ = out.add_stream_from_template(v.streams.video[0]), out.add_stream_from_template(a.streams.audio[0])
        for pkt in v.demux(v.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = vs
                out.mux(pkt)
        for pkt in a.demux(a.streams.audio[0]):
            if pkt.dts is not None:
                pkt.stream = as_
                out.mux(pkt)
    got, _ = _detect(with_audio, "speaker", extra={"speech": with_audio})
    owners = [_owner(b, t) for (b, _), t in zip(got, truth)]
    warm = 25
    accuracy = np.mean([o == w for o, w in zip(owners[warm:], who[warm:])])
    latency = [next(i for i in range(t, len(who)) if owners[i] == who[t]) - t for t in (100, 200)]
    print(f"speaker: per-frame accuracy {accuracy:.3f} after the first second, switch latency {latency} frames")
    assert accuracy >= 0.85 and max(latency) <= 20


def test_speaker_needs_the_videos_audio(tmp_path):
    from lipgraph.tools.synthetic import graph_command
    from lipgraph.tools.synthetic_faces import make_people_clip
    video, audio, _ = make_people_clip(str(tmp_path), "F" * 10)       # an .mp4 without sound
    cmd = graph_command("musetalk", video, audio, str(tmp_path / "o.mp4"), ["detect.detector=haar"],
                        "--face", "speaker", "--random-weights")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "detect.face=speaker" in proc.stderr and video in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "o.mp4")
