"""The MuseTalk graph end to end on real media (a face photograph with cutaway runs) with
tiny random-initialised models saved in the real checkpoint formats.

Outputs are written losslessly (FFV1 in Matroska) so frames can be compared bit for bit:
every input frame within the output's span appears once, in order; cutaways are untouched;
face frames change only in the lower part of the face box; audio and video end together.
"""
import json
import os
import subprocess

import numpy as np
import pytest

from lipgraph.media.audio import probe_audio, read_audio
from lipgraph.media.pingpong import pingpong_indices
from lipgraph.media.probe import probe_video
from lipgraph.media.video import VideoReader
from media_fixtures import psnr
from lipgraph.tools.synthetic import clip_frames, graph_command, make_clip, model_sets, read_id, tiny_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH = os.path.join(ROOT, "configs", "graphs", "musetalk.yaml")
LOSSLESS = ["mux.codec=ffv1", "mux.pix_fmt=bgr0"]


@pytest.fixture(scope="module")
def weights(tiny_models):
    return tiny_models


def run_graph(video, audio, output, sets=(), runner="process", expect=0, extra=()):
    cmd = graph_command(GRAPH, video, audio, output, sets, "--quiet", "--runner", runner, *extra)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def frames_of(path):
    return [(f.image, f.time) for f in VideoReader(path)]


def check_output(video, output, n_out, cutaway_ids):
    src = [f for f, _ in frames_of(video)]
    out = frames_of(output)
    assert len(out) == n_out
    ids = [read_id(f) for f, _ in out]
    assert ids == list(pingpong_indices(len(src), n_out))      # each frame once, in order
    changed = 0
    for (frame, _), i in zip(out, ids):
        diff = (frame != src[i]).any(-1)
        if i in cutaway_ids:
            assert not diff.any(), f"cutaway frame {i} was modified"
            continue
        changed += diff.any()
        ys, xs = np.nonzero(diff)
        if len(ys):
            # the astronaut's face sits at x 60..260, y 30..230; the mask covers the
            # lower half of the paste region only
            assert xs.min() >= 50 and xs.max() < 270 and ys.max() < 232, (i, xs.min(), xs.max())
            assert ys.min() > 60, (i, ys.min())
    assert changed >= (n_out - len([i for i in ids if i in cutaway_ids])) // 2
    v = probe_video(output)
    assert abs(v.fps - 25.0) < 1e-9
    assert abs(len(read_audio(output)) / 16000 - n_out / v.fps) <= 1 / v.fps
    return ids


def test_longer_audio_pingpongs_cutaways_untouched(tmp_path, weights):
    pattern = "F" * 12 + "C" * 6 + "F" * 12
    video, audio = make_clip(str(tmp_path), pattern, audio_s=1.7)
    out = str(tmp_path / "out.mkv")
    run_graph(video, audio, out, model_sets(weights) + LOSSLESS)
    n_out = int(1.7 * 25)                            # the dub defines the length
    ids = check_output(video, out, n_out, cutaway_ids=set(range(12, 18)))
    assert ids[30:] == [29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18]   # played backwards
    prof = json.load(open(out + ".profile.json"))
    faces = sum(1 for i in ids if i not in range(12, 18))
    assert prof["stages"]["unet"]["items_in"] == faces
    assert prof["stages"]["mux"]["items_in"] == n_out
    # detect_every 1: every frame went through the detector once
    assert prof["stages"]["detect"]["counters"] == {"faces": faces, "cutaways": n_out - faces,
                                                     "detected": n_out}
    assert prof["bottleneck"]["stage"] in prof["stages"]
    trace = json.load(open(out + ".trace.json"))
    assert any(e.get("name") == "unet" for e in trace["traceEvents"])


def test_shorter_audio_cuts_and_length_video_pads(tmp_path, weights):
    pattern = "FFFFFFFFCCCCFFFFFFFF"
    video, audio = make_clip(str(tmp_path), pattern, audio_s=0.5)
    out = str(tmp_path / "short.mkv")
    run_graph(video, audio, out, model_sets(weights) + LOSSLESS)
    check_output(video, out, 12, cutaway_ids=set(range(8, 12)))
    out2 = str(tmp_path / "full.mkv")
    run_graph(video, audio, out2, model_sets(weights) + LOSSLESS + ["video.length=video"])
    check_output(video, out2, 20, cutaway_ids=set(range(8, 12)))
    assert abs(probe_audio(out2).duration_s - 0.8) < 0.05      # padded with silence


def test_runners_give_identical_frames(tmp_path, weights):
    video, audio = make_clip(str(tmp_path), "FFFFFFCCFFFFFF")
    a, b = str(tmp_path / "p.mkv"), str(tmp_path / "i.mkv")
    run_graph(video, audio, a, model_sets(weights) + LOSSLESS)
    run_graph(video, audio, b, model_sets(weights) + LOSSLESS, runner="inline")
    fa, fb = frames_of(a), frames_of(b)
    assert len(fa) == len(fb) == 14
    assert all(np.array_equal(x, y) and t == u for (x, t), (y, u) in zip(fa, fb))


def test_video_without_any_face(tmp_path, weights):
    video, audio = make_clip(str(tmp_path), "C" * 15)
    out = str(tmp_path / "o.mkv")
    run_graph(video, audio, out, model_sets(weights) + LOSSLESS)
    check_output(video, out, 15, cutaway_ids=set(range(15)))
    prof = json.load(open(out + ".profile.json"))
    assert prof["stages"]["unet"]["items_in"] == 0


def test_h264_output_with_odd_size_and_parsing(tmp_path):
    """Default encoder settings (H.264 yuv420p): odd sizes padded; BiSeNet weights used,
    parsed every 3rd face frame and carried over between."""
    w = tiny_weights(str(tmp_path / "models"), bisenet=True)
    video, audio = make_clip(str(tmp_path), "F" * 10, width=321, height=241)
    out = str(tmp_path / "o.mp4")
    run_graph(video, audio, out, model_sets(w) + ["parse.parse_every=3"])
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count) == (322, 242, 10)
    assert info.codec == "h264" and abs(info.fps - 25.0) < 1e-9
    assert probe_video(video).width == 321
    prof = json.load(open(out + ".profile.json"))
    assert prof["stages"]["detect"]["counters"]["faces"] == 10
    assert prof["stages"]["parse"]["counters"]["parsed"] == 4        # frames 0, 3, 6, 9


def test_variable_frame_rate_timing_kept(tmp_path, weights):
    from media_fixtures import make_audio, make_video, vfr_times
    times = vfr_times(20, 25.0, seed=4)
    video = str(tmp_path / "vfr.mkv")
    make_video(video, clip_frames("F" * 20), times=times, size=(320, 240))
    audio = str(tmp_path / "a.wav")
    make_audio(audio, seconds=times[-1] + 0.5)
    out = str(tmp_path / "o.mkv")
    run_graph(video, audio, out, model_sets(weights) + LOSSLESS + ["video.length=video"])
    got = [t for _, t in frames_of(out)]     # (through segments joined by packet copy)
    assert np.allclose(got, [t - times[0] for t in times], atol=1e-3)


def test_missing_input_names_file_and_leaves_nothing(tmp_path, weights):
    """Checked before anything starts (the job records its inputs' identity)."""
    _, audio = make_clip(str(tmp_path), "FFFF")
    out = str(tmp_path / "o.mkv")
    proc = run_graph(str(tmp_path / "nope.mp4"), audio, out, model_sets(weights), expect=2)
    assert "stage 'video'" in proc.stderr and "nope.mp4" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(tmp_path) if ".partial" in f]


def test_missing_weights_one_error_listing_all(tmp_path):
    video, audio = make_clip(str(tmp_path), "FFFF")
    empty = tmp_path / "models"
    empty.mkdir()
    proc = run_graph(video, audio, str(tmp_path / "o.mp4"), expect=2,
                     extra=["--weights", str(empty)])
    err = proc.stderr
    for name in ("musetalk_unet", "musetalk_unet_config", "sd_vae_config", "sd_vae_weights",
                 "whisper_config", "whisper_weights"):
        assert name in err, name
    assert err.count("Missing") == 1 and "lipgraph.tools.download_weights" in err


def test_rotated_input_comes_out_upright(tmp_path, weights):
    from media_fixtures import make_audio, make_video
    video = str(tmp_path / "rot.mp4")
    make_video(video, clip_frames("FFFFFFCCC"), rotation=90, size=(320, 240))
    assert probe_video(video).rotation == 90
    audio = str(tmp_path / "a.wav")
    make_audio(audio, seconds=9 / 25)
    out = str(tmp_path / "o.mkv")
    run_graph(video, audio, out, model_sets(weights) + LOSSLESS)
    frames = frames_of(out)
    assert frames[0][0].shape == (240, 320, 3)              # upright, as players show it
    assert [read_id(f) for f, _ in frames] == list(range(9))
    prof = json.load(open(out + ".profile.json"))
    assert prof["stages"]["detect"]["counters"]["faces"] == 6   # the face was found upright


def _audio_lag_s(ref, out, sr=16000, max_lag_s=0.2):
    """Lag of `out` behind `ref` by cross-correlating their envelopes (10 ms hops)."""
    hop = sr // 100
    n = min(len(ref), len(out)) // hop
    env = [np.abs(x[:n * hop]).reshape(n, hop).mean(1) for x in (ref, out)]
    env = [e - e.mean() for e in env]
    lags = range(-int(max_lag_s * 100), int(max_lag_s * 100) + 1)
    score = [np.dot(env[0][max(0, -k):n - max(0, k)], env[1][max(0, k):n - max(0, -k)]) for k in lags]
    return lags[int(np.argmax(score))] / 100


def test_face_and_cutaway_clip_h264_end_to_end(tmp_path, weights):
    """The user's case with the default encoder: a moving, scaling face photograph cut with
    cutaway runs and a dub. Frame count and duration, audio present and in sync, cutaways
    equal to the input within codec tolerance, face frames changed only inside the blend
    mask's box, and every stage in the profile."""
    from lipgraph.media.writer import VideoWriter
    pattern = "F" * 20 + "C" * 8 + "F" * 16 + "C" * 6 + "F" * 10
    video, audio = make_clip(str(tmp_path), pattern)
    out, sidecar = str(tmp_path / "out.mp4"), str(tmp_path / "frames.jsonl")
    run_graph(video, audio, out, model_sets(weights) + [f"mux.sidecar={sidecar}"])
    src = [f for f, _ in frames_of(video)]
    got = frames_of(out)
    assert len(got) == len(pattern) == 60
    info = probe_video(out)
    assert info.codec == "h264" and abs(info.fps - 25.0) < 1e-9
    assert abs(got[-1][1] - 59 / 25) < 1e-3                  # timing kept
    # audio: present, as long as the video within a frame, and not shifted
    a_in, a_out = read_audio(audio), read_audio(out)
    assert abs(len(a_out) / 16000 - 60 / 25) <= 1 / 25
    assert abs(_audio_lag_s(a_in, a_out)) <= 1 / 25
    # the same input frames encoded alone with the same settings: the codec's own error
    ref_path = str(tmp_path / "ref.mp4")
    from lipgraph.stages.mux import Mux
    with VideoWriter(ref_path, 320, 240, 25.0, crf=Mux.params["crf"],
                     preset=Mux.params["preset"]) as w:
        for f in src:
            w.write(f)
    ref = [f for f, _ in frames_of(ref_path)]
    lines = [json.loads(line) for line in open(sidecar)]
    assert [d["index"] for d in lines] == list(range(60))
    edited = 0
    for i, ((frame, _), d) in enumerate(zip(got, lines)):
        if pattern[i] == "C":
            assert d["face"] is None and d["edit"] is None
            assert psnr(frame, ref[i]) >= 40, i
            continue
        # outside the mask's box (and the 16-px macroblocks straddling its edge, which the
        # encoder codes together with the new mouth) the frame is the input, within the
        # error the codec makes on these frames encoded alone
        x1, y1, x2, y2 = d["edit"]
        outside = np.ones(frame.shape[:2], bool)
        outside[max(0, y1 - 16):y2 + 16, max(0, x1 - 16):x2 + 16] = False
        codec_error = psnr(ref[i][outside], src[i][outside])
        assert psnr(frame[outside], src[i][outside]) >= codec_error - 1.0, i
        edited += psnr(frame[y1:y2, x1:x2], src[i][y1:y2, x1:x2]) < 30     # the mouth changed
    assert edited >= 40
    prof = json.load(open(out + ".profile.json"))
    import yaml
    stages = yaml.safe_load(open(GRAPH))["stages"]
    assert set(prof["stages"]) == set(stages)
    for name, s in prof["stages"].items():
        assert s["items_in"] + s["items_out"] > 0, name
    assert prof["stages"]["unet"]["items_in"] == pattern.count("F")
    assert prof["stages"]["mux"]["items_in"] == 60


def test_longer_audio_pingpongs_a_matroska_video(tmp_path, weights):
    """Matroska stores no frame count (only an estimate from the duration): the output
    still follows the dub, playing the video back and forth."""
    from media_fixtures import make_audio, make_video
    video = str(tmp_path / "in.mkv")
    make_video(video, clip_frames("F" * 6 + "C" * 4), size=(320, 240))
    assert not probe_video(video).frame_count_exact
    audio = str(tmp_path / "a.wav")
    make_audio(audio, seconds=0.9)
    out = str(tmp_path / "o.mkv")
    run_graph(video, audio, out, model_sets(weights) + LOSSLESS)
    ids = [read_id(f) for f, _ in frames_of(out)]
    assert ids == list(pingpong_indices(10, 22))
