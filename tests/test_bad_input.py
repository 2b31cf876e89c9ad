"""Bad input gets one clear error naming the file and the stage (exit status 2, no
traceback, nothing left at the output path), or, where the input is usable, a warning and
a correct output: truncated video, no face anywhere, a single frame, 4K frames."""
import json
import os
import subprocess

import numpy as np
import pytest

from lipgraph.media.probe import probe_video
from tests.test_pipeline_musetalk import GRAPH, LOSSLESS, ROOT
from lipgraph.tools.synthetic import clip_frames, graph_command, make_clip, model_sets, read_id


@pytest.fixture(scope="module")
def weights(tiny_models):
    return tiny_models


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(str(tmp_path_factory.mktemp("clip")), "FFFFFFCCCC")


def run(video, audio, out, weights, sets=(), expect=0, timeout=300):
    cmd = graph_command(GRAPH, video, audio, out, list(model_sets(weights)) + list(sets), "--quiet")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def refused(proc, *words):
    """One clear message: names what it must, no traceback."""
    err = proc.stderr
    assert "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def nothing_at(out):
    folder = os.path.dirname(out)
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(folder) if ".partial" in f or f.endswith(".lipgraph")]


def test_not_a_video(tmp_path, weights, clip):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is not a video\n" * 50)
    out = str(tmp_path / "o.mp4")
    refused(run(str(bogus), clip[1], out, weights, expect=2), "stage 'video'", "notes.mp4")
    nothing_at(out)


def test_no_video_stream(tmp_path, weights, clip):
    out = str(tmp_path / "o.mp4")
    proc = run(clip[1], clip[1], out, weights, expect=2)       # a wav given as the video
    refused(proc, "stage 'video'", "clip.wav", "no video stream")
    nothing_at(out)


def test_no_audio_stream(tmp_path, weights, clip):
    out = str(tmp_path / "o.mp4")
    proc = run(clip[0], clip[0], out, weights, expect=2)       # a silent video given as the audio
    refused(proc, "stage 'audio'", "clip.mp4", "no audio stream")
    nothing_at(out)


def test_empty_audio(tmp_path, weights, clip):
    import wave
    empty = str(tmp_path / "empty.wav")
    with wave.open(empty, "wb") as w:          # a valid header and no samples
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    out = str(tmp_path / "o.mp4")
    proc = run(clip[0], empty, out, weights, expect=2)
    refused(proc, "stage 'audio'", "empty.wav", "empty")
    nothing_at(out)


@pytest.mark.parametrize("case", ["missing-folder", "folder-is-a-file", "read-only", "is-a-folder"])
def test_unwritable_output(tmp_path, weights, clip, case):
    if case == "read-only" and os.geteuid() == 0:
        pytest.skip("root can write in a read-only folder")
    if case == "missing-folder":
        out = str(tmp_path / "no" / "such" / "o.mp4")
    elif case == "folder-is-a-file":
        (tmp_path / "file.txt").write_text("x")
        out = str(tmp_path / "file.txt" / "o.mp4")
    elif case == "is-a-folder":
        os.mkdir(tmp_path / "o.mp4")
        out = str(tmp_path / "o.mp4")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        out = str(ro / "o.mp4")
    before = sorted(os.listdir(tmp_path))
    proc = run(clip[0], clip[1], out, weights, expect=2)
    refused(proc, "stage 'mux'", "o.mp4")
    assert sorted(os.listdir(tmp_path)) == before             # nothing written anywhere
    if case == "is-a-folder":
        assert os.listdir(out) == []


def test_read_only_output_folder_is_refused(tmp_path, monkeypatch):
    """What the run above checks for a read-only folder, here even when run as root (root
    may write anywhere, so the permission answer is simulated)."""
    from lipgraph.stages.mux import Mux
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    problems = Mux.check_files({"path": str(tmp_path / "o.mp4")})
    assert problems and "cannot write in the output folder" in problems[0] and "o.mp4" in problems[0]
    monkeypatch.setattr(os, "access", real)
    assert Mux.check_files({"path": str(tmp_path / "o.mp4")}) == []


def test_truncated_video_keeps_what_decodes_and_warns(tmp_path, weights):
    """A video cut off mid-file: the readable frames come out, with a warning; no hang."""
    from media_fixtures import make_video
    # Matroska: clusters stay readable up to the cut (an mp4 cut before its index is
    # refused as not a video)
    mkv = str(tmp_path / "full.mkv")
    make_video(mkv, clip_frames("F" * 20 + "C" * 20), size=(320, 240), gop=5)
    data = open(mkv, "rb").read()
    cut = str(tmp_path / "cut.mkv")
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])
    _, audio = make_clip(str(tmp_path), "F", audio_s=40 / 25)
    out = str(tmp_path / "o.mkv")
    proc = run(cut, audio, out, weights, LOSSLESS + ["video.length=video"], timeout=120)
    from lipgraph.media.video import VideoReader
    got = [read_id(f.image) for f in VideoReader(out)]
    assert 5 <= len(got) < 40
    assert got == list(range(len(got)))
    assert "cut.mkv" in proc.stderr and "truncated or damaged" in proc.stderr


def test_no_face_anywhere_warns_and_passes_the_video_through(tmp_path, weights):
    video, audio = make_clip(str(tmp_path), "C" * 12)
    out = str(tmp_path / "o.mkv")
    proc = run(video, audio, out, weights, LOSSLESS)
    assert "no face found in any of the 12 frames" in proc.stderr
    from lipgraph.media.video import VideoReader
    src = [f.image for f in VideoReader(video)]
    got = [f.image for f in VideoReader(out)]
    assert len(got) == 12 and all(np.array_equal(a, b) for a, b in zip(src, got))


def test_one_frame_video(tmp_path, weights):
    """One frame and a longer dub: that frame is shown for the whole dub (ping-pong of one)."""
    video, _ = make_clip(str(tmp_path), "F")
    _, audio = make_clip(str(tmp_path), "F", audio_s=0.4, name="dub")
    out = str(tmp_path / "o.mkv")
    run(video, audio, out, weights, LOSSLESS)
    from lipgraph.media.video import VideoReader
    got = list(VideoReader(out))
    assert len(got) == 10
    assert {read_id(f.image) for f in got} == {0}
    out2 = str(tmp_path / "o2.mkv")
    run(video, audio, out2, weights, LOSSLESS + ["video.length=video"])
    assert len(list(VideoReader(out2))) == 1


def test_4k_frames_memory_stays_bounded(tmp_path, weights):
    """4K frames stream through: peak memory is set by the queues, not the video's length
    (a clip three times longer needs less than a frame more per extra frame)."""
    peaks = {}
    for n in (8, 24):
        folder = tmp_path / str(n)
        folder.mkdir()
        video, audio = make_clip(str(folder), "F" * (n // 2) + "C" * (n // 2), width=3840,
                                 height=2160, crf=30)
        out = str(folder / "o.mp4")
        run(video, audio, out, weights, ["mux.preset=ultrafast", "detect.detect_every=4"],
            timeout=600)
        info = probe_video(out)
        assert (info.width, info.height, info.frame_count) == (3840, 2160, n)
        peaks[n] = json.load(open(out + ".profile.json"))["peak_rss_total_bytes"]
    # 8 frames fit in the queues whole, 24 do not: the longer clip may hold more frames in
    # flight, but less than one 4K frame per extra frame of length. Keeping every frame (or
    # any copy of each) would add at least that much on top of the in-flight growth.
    frame = 3840 * 2160 * 3
    assert peaks[24] - peaks[8] < (24 - 8) * frame, (peaks, (peaks[24] - peaks[8]) / frame)
