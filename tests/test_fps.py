"""Output frame rate (video_source `fps`, `--fps`): the frame-selection rule (FFmpeg's `fps`
filter, checked against libavfilter itself), the resampling reader (ping-pong, resume
offsets), the stage's counts, and whole MuseTalk graphs at --fps 25 on 29.97 and 60 fps
clips: which source frame each output frame is, audio in sync, cutaways untouched; and
`source` (the default) giving the input's own frames and timing."""
import json
import math
import os
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from lipgraph.graph.spec import GraphError, load_graph
from lipgraph.media.audio import probe_audio, read_audio
from lipgraph.media.frame_source import keyframe_indices
from lipgraph.media.pingpong import pingpong_indices
from lipgraph.media.probe import probe_video
from lipgraph.media.resample import ResampledReader, covering_count, fps_slot, resample_picks, resampled_frames
from lipgraph.media.video import VideoReader
from media_fixtures import make_video, read_pattern_index, vfr_times
from lipgraph.stages.video_source import VideoSource
from lipgraph.tools.synthetic import graph_command, make_clip, model_sets, read_id

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUSETALK = os.path.join(ROOT, "configs", "graphs", "musetalk.yaml")
SURGICAL = os.path.join(ROOT, "configs", "graphs", "surgical.yaml")
LOSSLESS = ["mux.codec=ffv1", "mux.pix_fmt=bgr0"]
NTSC = Fraction(30000, 1001)


def expected_pick(k: int, src_fps: Fraction, out_fps: Fraction = Fraction(25)) -> int:
    """For a constant-rate source (frame i at i / src_fps): the last i with
    (i / src_fps) * out_fps < k + 1/2, solved directly (independent of resample_picks)."""
    bound = (2 * k + 1) * src_fps / (2 * out_fps)       # i < bound
    return math.ceil(bound) - 1


# ----- the rule ----------------------------------------------------------------------------
def test_fps_slot_rounds_to_nearest_with_halves_up():
    assert [fps_slot(Fraction(n, 10), 1) for n in range(0, 30, 5)] == [0, 1, 1, 2, 2, 3]
    assert fps_slot(Fraction(1001, 30000), 25) == 1               # 0.834 output frames
    assert fps_slot(Fraction(2, 100), 25) == 1                    # exactly half: up
    assert fps_slot(Fraction(2, 100) - Fraction(1, 10**9), 25) == 0


@pytest.mark.parametrize("src", [NTSC, Fraction(60), Fraction(15), Fraction(50)])
def test_picks_for_constant_rate_sources(src):
    n = 90
    times = [Fraction(i) / src for i in range(n)]
    count = covering_count(n / src, 25)
    picks = resample_picks(times, 25, count)
    assert count == round(n / src * 25)
    assert list(picks) == [min(n - 1, expected_pick(k, src)) for k in range(count)]
    assert np.all(np.diff(picks) >= 0)
    if src > 25:
        assert len(set(picks.tolist())) == count          # only drops, no repeats
    else:
        assert set(picks.tolist()) == set(range(n))        # only repeats, no drops


def test_picks_edge_cases():
    # 60 -> 25: frames 0 and 1 both start on output frame 0; the later one is shown
    assert list(resample_picks([Fraction(i, 60) for i in range(6)], 25, 3)) == [1, 3, 5]
    # a single frame covers as many output frames as asked; a short count stops early
    assert list(resample_picks([0], 25, 4)) == [0, 0, 0, 0]
    assert list(resample_picks([Fraction(i, 10) for i in range(50)], 25, 0)) == []
    assert covering_count(Fraction(1, 60), 25) == 1               # never zero frames
    # identity when the rates match
    assert list(resample_picks([Fraction(i, 25) for i in range(30)], 25, 30)) == list(range(30))


def _libavfilter_fps(pts: list[int], tb: Fraction, duration: int, fps: Fraction) -> list[int]:
    """Source frame number behind each output frame of FFmpeg's `fps` filter (defaults)."""
    graph = av.filter.Graph()
    src = graph.add_buffer(width=16, height=16, format="gray", time_base=tb)
    flt = graph.add("fps", f"fps={fps.numerator}/{fps.denominator}")
    sink = graph.add("buffersink")
    src.link_to(flt)
    flt.link_to(sink)
    graph.configure()
    out = []

    def drain():
        while True:
            try:
                frame = sink.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            a = frame.to_ndarray()
            out.append(int(a[0, 0]) * 256 + int(a[0, 1]))

    for i, p in enumerate(pts):
        a = np.zeros((16, 16), np.uint8)
        a[0, 0], a[0, 1] = divmod(i, 256)
        frame = av.VideoFrame.from_ndarray(a, format="gray")
        frame.pts, frame.time_base, frame.duration = int(p), tb, duration
        src.push(frame)
        drain()
    src.push(None)
    drain()
    return out


@pytest.mark.parametrize("case", ["ntsc", "60", "15", "50-exact-halves", "vfr", "25-to-ntsc"])
def test_picks_match_libavfilter_fps_filter(case):
    tb = Fraction(1, 90000)
    fps = Fraction(25)
    if case == "ntsc":
        tb, pts, dur = Fraction(1, 30000), [1001 * i for i in range(200)], 1001
    elif case == "60":
        pts, dur = [1500 * i for i in range(200)], 1500
    elif case == "15":
        pts, dur = [6000 * i for i in range(40)], 6000
    elif case == "50-exact-halves":
        tb, pts, dur = Fraction(1, 50), list(range(100)), 1
    elif case == "vfr":
        pts, dur = [round(t * 90000) for t in vfr_times(150, 30.0, seed=3)], 3000
    else:
        tb, pts, dur, fps = Fraction(1, 12800), [512 * i for i in range(100)], 512, NTSC
    try:
        ref = _libavfilter_fps(pts, tb, dur, fps)
    except (AttributeError, TypeError, ValueError) as exc:      # an older PyAV
        pytest.skip(f"PyAV filter graph unavailable: {exc}")
    times = [(p - pts[0]) * tb for p in pts]
    picks = resample_picks(times, fps, covering_count(times[-1] + dur * tb, fps))
    assert list(picks) == ref


def test_fps_param_values():
    rate = VideoSource.output_rate
    assert rate({"fps": "source"}) is None
    assert rate({"fps": "25"}) == 25 and rate({"fps": "29.97"}) == Fraction(2997, 100)
    assert rate({"fps": "30000/1001"}) == NTSC
    for bad in ("fast", "0", "-25", "1/0", "25.00001"):
        with pytest.raises(ValueError):
            rate({"fps": bad})
    paths = ["video.path=a.mp4", "audio.path=b.wav", "video.audio=b.wav", "mux.path=o.mp4"]
    assert load_graph(MUSETALK, paths).stages["video"].params["fps"] == "source"
    assert load_graph(SURGICAL, paths).stages["video"].params["fps"] == "25"
    assert load_graph(MUSETALK, paths + ["video.fps=30000/1001"]).stages["video"].params["fps"] == "30000/1001"
    with pytest.raises(GraphError, match="params.fps"):
        load_graph(MUSETALK, paths + ["video.fps=fast"])


# ----- the reader and the stage on a small clip ----------------------------------------------
@pytest.fixture(scope="module")
def clip60(tmp_path_factory):
    """24 pattern frames at 60 fps (0.4 s), a keyframe every 5 frames."""
    path = str(tmp_path_factory.mktemp("fps") / "c60.mp4")
    make_video(path, 24, fps=60.0, gop=5)
    return path


def test_reader_pingpong_and_resume_offsets(clip60):
    src = [f.image for f in VideoReader(clip60)]
    picks = resampled_frames(clip60, 25)
    assert list(picks) == [expected_pick(k, Fraction(60)) for k in range(10)]   # 0.4 s * 25
    n_out = 27                                   # forward, backward, forward again
    with ResampledReader(clip60, 25, n_out, chunk=4) as r:
        full = list(r)
    want = [int(picks[r]) for r in pingpong_indices(len(picks), n_out)]
    assert [f.source_index for f in full] == want
    assert [f.index for f in full] == list(range(n_out))
    assert np.allclose([f.time for f in full], np.arange(n_out) / 25)
    for f in full:
        assert np.array_equal(f.image, src[f.source_index])          # untouched decoded frame
        assert read_pattern_index(f.image) == f.source_index
    # a turning frame is shown twice: two arrays, so editing one leaves the other alone
    assert full[9].source_index == full[10].source_index and full[9].image is not full[10].image
    for start in (3, 10, 14, 21):                # mid forward, on a turn, mid backward, pass 3
        with ResampledReader(clip60, 25, n_out, chunk=4, start=start) as r:
            tail = list(r)
        assert [f.source_index for f in tail] == want[start:]
        assert all(np.array_equal(a.image, b.image) for a, b in zip(tail, full[start:]))


def test_reader_follows_presentation_times(tmp_path):
    path = str(tmp_path / "vfr.mp4")
    ticks = [round(t * 90000) for t in make_video(path, 30, fps=30.0, vfr=True)]
    times = [Fraction(t - ticks[0], 90000) for t in ticks]
    want = list(resample_picks(times, 25, 20))
    assert want != [expected_pick(k, Fraction(30)) for k in range(20)]     # not the nominal rate
    with ResampledReader(path, 25, 20) as r:
        got = [(f.source_index, read_pattern_index(f.image)) for f in r]
    assert got == [(w, w) for w in want]


def test_reader_repeats_are_copies(tmp_path):
    path = str(tmp_path / "c10.mp4")
    make_video(path, 6, fps=10.0)
    with ResampledReader(path, 25, 15) as r:
        frames = list(r)
    assert [f.source_index for f in frames] == [expected_pick(k, Fraction(10)) for k in range(15)]
    assert frames[0].source_index == frames[1].source_index == 0
    frames[0].image[:] = 0
    assert frames[1].image.any()


def test_stage_counts_times_and_resume_window(clip60, tmp_path):
    from lipgraph.tools.synthetic import speech_like, write_wav
    audio = str(tmp_path / "a.wav")
    write_wav(audio, speech_like(0.7))
    params = {"path": clip60, "audio": audio, "fps": "25"}
    _, total, _ = VideoSource.plan({**VideoSource.params, **params})
    assert total == 17                                            # floor(0.7 * 25)
    _, total, _ = VideoSource.plan({**VideoSource.params, **params, "length": "video"})
    assert total == 10                                            # covers 0.4 s
    _, total, _ = VideoSource.plan({**VideoSource.params, **params, "fps": "source"})
    assert total == 42                                            # floor(0.7 * 60): as before

    def run(**extra):
        stage = VideoSource("video", {**params, **extra})
        stage.open()
        msgs = [m for _, m in stage.generate()]
        return msgs[0].data, msgs[1:]

    info, items = run()
    assert info["fps"] == 25.0 and info["total"] == 17
    picks = resampled_frames(clip60, 25)
    assert [it.data["src_index"] for it in items] == [int(picks[r]) for r in pingpong_indices(10, 17)]
    assert [it.time for it in items] == [k / 25 for k in range(17)]
    # a resumed part: output frames 12..14, decoded from 12 - preroll
    info, items = run(start=12, preroll=3, stop=15)
    assert info["start_index"] == 9
    assert [it.index for it in items] == [9, 10, 11, 12, 13, 14]
    assert [bool(it.data.get("preroll")) for it in items] == [True] * 3 + [False] * 3
    assert [it.data["src_index"] for it in items] == [int(picks[r]) for r in pingpong_indices(10, 17)][9:15]


def test_split_cuts_map_source_keyframes_to_output_frames(clip60):
    vinfo = probe_video(clip60)
    keys = keyframe_indices(clip60)
    assert keys[0] == 0 and len(keys) >= 4
    base = {**VideoSource.params, "path": clip60, "length": "video"}
    assert VideoSource.output_keyframes(base, vinfo) == keys
    picks = resampled_frames(clip60, 25)
    cuts = VideoSource.output_keyframes({**base, "fps": "25"}, vinfo)
    assert cuts == sorted({next(r for r in range(len(picks)) if picks[r] >= k) for k in keys})
    assert all(picks[r] >= k and (r == 0 or picks[r - 1] < k) for r, k in zip(cuts, keys))


# ----- whole graphs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tiny_models):
    return tiny_models


def run_graph(video, audio, out, sets=(), extra=()):
    cmd = graph_command(MUSETALK, video, audio, out, list(sets), "--quiet", "--no-trace", *extra)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def check_audio(audio_in: str, out: str, n_frames: int, fps: float):
    """The output's audio is the input's, from the same instant (no shift), and ends with
    the video (within one frame)."""
    ref, got = read_audio(audio_in), read_audio(out)
    assert abs(len(got) / 16000 - n_frames / fps) <= 1 / fps
    n = min(len(ref), len(got))
    probe = ref[1600:n - 1600]
    corr = np.correlate(got[:n], probe, "valid")          # lag 0 sits at index 1600
    assert int(np.argmax(corr)) - 1600 == 0
    assert np.sqrt(np.mean((got[:n] - ref[:n]) ** 2)) < 0.05


def check_frames(video: str, out: str, want_src: list[int], cutaways: set[int], sidecar: str):
    src = [f.image for f in VideoReader(video)]
    frames = list(VideoReader(out))
    assert [read_id(f.image) for f in frames] == want_src
    lines = [json.loads(line) for line in open(sidecar)]
    assert [d["src"] for d in lines] == want_src
    assert [d["index"] for d in lines] == list(range(len(want_src)))
    for f, s, d in zip(frames, want_src, lines):
        if s in cutaways:
            assert d["face"] is None
            assert np.array_equal(f.image, src[s]), f"cutaway output frame {f.index} (source {s}) changed"
    return frames


def test_graph_ntsc_to_25_length_video(tmp_path, weights):
    pattern = "F" * 20 + "C" * 10 + "F" * 10                     # 40 frames, 1.335 s
    video, audio = make_clip(str(tmp_path), pattern, fps=float(NTSC), audio_s=1.2)
    out, side = str(tmp_path / "o.mkv"), str(tmp_path / "o.jsonl")
    run_graph(video, audio, out, model_sets(weights) + LOSSLESS + [f"mux.sidecar={side}", "video.length=video"],
              ["--fps", "25"])
    n = round(40 / NTSC * 25)                                     # 33 frames cover the source
    want = [expected_pick(k, NTSC) for k in range(n)]
    frames = check_frames(video, out, want, set(range(20, 30)), side)
    assert len(set(want)) == n                                    # 7 of 40 dropped, none repeated
    assert np.allclose([f.time for f in frames], np.arange(n) / 25, atol=1e-3)
    assert probe_video(out).fps == 25.0
    assert abs(probe_audio(out).duration_s - n / 25) < 0.05       # padded with silence
    check_audio(audio, out, n, 25.0)


def test_graph_60_to_25_pingpongs_resampled_frames(tmp_path, weights):
    pattern = "F" * 30 + "C" * 15 + "F" * 15                     # 60 frames, 1.0 s
    video, audio = make_clip(str(tmp_path), pattern, fps=60.0, audio_s=1.5)
    out, side = str(tmp_path / "o.mkv"), str(tmp_path / "o.jsonl")
    run_graph(video, audio, out, model_sets(weights) + LOSSLESS + [f"mux.sidecar={side}"], ["--fps", "25"])
    n = int(1.5 * 25)                                             # the dub sets the length
    picks = [expected_pick(k, Fraction(60)) for k in range(25)]   # 1.0 s of resampled frames
    want = [picks[r] for r in pingpong_indices(25, n)]
    assert want[24:27] == [58, 58, 56]                            # turns on the resampled frames
    check_frames(video, out, want, set(range(30, 45)), side)
    check_audio(audio, out, n, 25.0)
    prof = json.load(open(out + ".profile.json"))
    assert prof["stages"]["mux"]["items_in"] == n


def test_graph_source_keeps_input_frames_and_timing(tmp_path, weights):
    """No --fps: musetalk.yaml's `source`, today's behaviour: every input frame once, in
    order, at its own time and rate."""
    pattern = "F" * 12 + "C" * 6 + "F" * 12
    video, audio = make_clip(str(tmp_path), pattern, fps=float(NTSC), audio_s=0.9)
    out, side = str(tmp_path / "o.mkv"), str(tmp_path / "o.jsonl")
    run_graph(video, audio, out, model_sets(weights) + LOSSLESS + [f"mux.sidecar={side}"])
    n = math.floor(0.9 * NTSC)                                    # 26
    frames = check_frames(video, out, list(range(n)), set(range(12, 18)), side)
    src_times = [f.time for f in VideoReader(video)][:n]
    assert np.allclose([f.time for f in frames], src_times, atol=1e-3)     # Matroska: ms ticks
    assert abs(probe_video(out).fps - float(NTSC)) < 1e-6
    check_audio(audio, out, n, float(NTSC))
