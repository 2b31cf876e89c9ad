"""Interrupted runs resume from their last complete segment and give what an uninterrupted
run gives: same frame count, timing, audio and cutaway frames."""
import json
import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from lipgraph.media.audio import read_audio
from lipgraph.media.video import VideoReader
from lipgraph.tools.synthetic import (graph_command, make_clip, model_sets, read_id, speech_like, tiny_weights,
                             write_wav)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH = os.path.join(ROOT, "configs", "graphs", "musetalk.yaml")
PATTERN = "F" * 30 + "C" * 12 + "F" * 38          # 80 frames; the audio asks for 100 (ping-pong)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    weights = tiny_weights(str(folder / "models"))
    video, audio = make_clip(str(folder), PATTERN, audio_s=4.0)
    sets = model_sets(weights) + ["mux.codec=ffv1", "mux.pix_fmt=bgr0", "mux.segment_s=0.4"]
    return folder, video, audio, sets


def command(video, audio, out, sets, resume=False):
    return graph_command(GRAPH, video, audio, out, sets, "--quiet", "--no-trace",
                         *(["--resume"] if resume else []))


def segments_done(out):
    path = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.lipgraph", "manifest.json")
    try:
        with open(path) as f:
            return len(json.load(f)["segments"])
    except (OSError, ValueError):
        return 0


def read(out):
    frames = list(VideoReader(out))
    return [f.image for f in frames], [f.time for f in frames], read_audio(out)


def interrupt(proc, how):
    """Ctrl-C, SIGTERM, SIGKILL of the runner (a reboot), or a crash: SIGKILL of one of
    its stage processes (the OOM killer), which the runner reports as a failure."""
    if how == "crash":
        import psutil

        def stage_process(k):
            try:           # a child that just ended (a zombie until reaped) is no candidate
                cmd = " ".join(k.cmdline())
                return "multiprocessing" in cmd and "resource_tracker" not in cmd
            except psutil.Error:
                return False
        kids = [k for k in psutil.Process(proc.pid).children(recursive=True) if stage_process(k)]
        max(kids, key=lambda k: k.memory_info().rss).kill()
    else:
        proc.send_signal({"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM,
                          "SIGKILL": signal.SIGKILL}[how])


# ffv1 proves bit-identity in CI; the h264 twin (the default codec) runs with the slow tests
@pytest.mark.parametrize("codec", ["ffv1", pytest.param("h264", marks=pytest.mark.slow)])
def test_interrupted_runs_resume_to_the_uninterrupted_result(setup, codec):
    folder, video, audio, sets = setup
    if codec == "h264":     # the default encoder: segments joined by packet copy
        sets = [s for s in sets if not s.startswith(("mux.codec", "mux.pix_fmt"))] + ["mux.preset=ultrafast"]
    ext = "mkv" if codec == "ffv1" else "mp4"
    ref = str(folder / f"ref.{ext}")
    subprocess.run(command(video, audio, ref, sets), cwd=ROOT, check=True, capture_output=True)
    out = str(folder / f"out.{ext}")
    rng = random.Random(7)
    plan = ["SIGINT", "crash", "SIGKILL", "SIGTERM"] if codec == "ffv1" else ["crash", "SIGINT"]
    done_before, resume = [], False
    for how in plan:
        proc = subprocess.Popen(command(video, audio, out, sets, resume), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        target = min(segments_done(out) + rng.randint(1, 2), 8)    # of 10 segments
        deadline = time.monotonic() + 120
        while segments_done(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.3))        # a random point inside the next segment
        assert proc.poll() is None, "finished before it could be interrupted"
        interrupt(proc, how)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode != 0, (how, err[-2000:])
        # the output appears only complete (written aside, renamed when joined)
        assert not os.path.exists(out)
        done_before.append(segments_done(out))
        resume = True
    finished = subprocess.run(command(video, audio, out, sets, resume=True), cwd=ROOT,
                              capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    # it went on from the segments already done, not from the start
    assert f"({done_before[-1]} segment(s) done)" in finished.stderr and done_before[-1] >= len(plan)
    assert not os.path.exists(os.path.join(folder, f".out.{ext}.lipgraph"))     # work folder gone

    (ref_frames, ref_times, ref_audio), (frames, times, got_audio) = read(ref), read(out)
    assert len(frames) == len(ref_frames) == 100
    assert times == ref_times
    assert len(got_audio) == len(ref_audio) and np.allclose(got_audio, ref_audio, atol=1e-6)
    for a, b in zip(frames, ref_frames):
        assert read_id(a) == read_id(b)
        if codec == "h264":
            continue            # encoder decisions differ between segmentations
        if PATTERN[read_id(a)] == "C":
            assert np.array_equal(a, b)                     # cutaways: exact
        else:
            # face frames: same models and inputs; batches may be cut differently after a
            # resume, which moves float rounding only
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 3


def test_resume_refuses_changed_inputs_or_graph(setup):
    folder, video, audio, sets = setup
    out = str(folder / "changed.mkv")
    proc = subprocess.Popen(command(video, audio, out, sets), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while segments_done(out) < 1 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    refused = subprocess.run(command(video, audio, out, sets + ["batch.batch_size=4"], resume=True),
                             cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2
    assert "cannot resume" in refused.stderr and "batch.batch_size: 8 -> 4" in refused.stderr
    other = str(folder / "other.wav")
    write_wav(str(folder / "new.wav"), 0.5 * speech_like(4.0))
    os.replace(audio, other)
    os.replace(str(folder / "new.wav"), audio)               # same name, different content
    try:
        refused = subprocess.run(command(video, audio, out, sets, resume=True), cwd=ROOT,
                                 capture_output=True, text=True)
        assert refused.returncode == 2 and "input of stage 'audio' changed" in refused.stderr
    finally:
        os.replace(other, audio)
    seg0 = os.path.join(folder, ".changed.mkv.lipgraph", "seg-000000.mp4")
    with open(seg0, "r+b") as f:                            # a damaged segment is redone
        f.truncate(100)
    fixed = subprocess.run(command(video, audio, out, sets, resume=True), cwd=ROOT,
                           capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert "damaged" in fixed.stderr
    assert len(list(VideoReader(out))) == 100


def test_resume_without_previous_run_starts_fresh(setup, tmp_path):
    folder, video, audio, sets = setup
    out = str(tmp_path / "fresh.mkv")
    done = subprocess.run(command(video, audio, out, sets, resume=True), cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "nothing to resume" in done.stderr
    assert len(list(VideoReader(out))) == 100
