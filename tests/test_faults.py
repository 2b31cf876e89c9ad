"""Faults that must leave nothing behind.

Disk full while the output is written: the run fails (exit status 1) with one message naming
the stage and the output and saying the disk is full; nothing is at the output path and no
temporary file is left anywhere; the finished segments stay, and `--resume` once space is
freed finishes the job from them. The full disk is a tmpfs mounted for the test (root only;
skipped, saying why, where mounting is not possible), partly taken by a filler file that
the test deletes to free space.

Damaged data in the middle of a stream: bytes inside some packets of an encoded clip (H.264 in
.mp4 and .mkv, MPEG-4 part 2 in .avi) or of an audio file (AAC in .m4a and ADTS, MP3) are
overwritten, the packets found by the demuxer's file positions. What decodes is used; a frame
that does not decode is stood in for by the previous decoded one (counted, warned once); a
damaged audio packet becomes silence of its duration; nothing moves in time.
"""
import contextlib
import json
import os
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

from lipgraph.media.audio import iter_audio_blocks, read_audio
from lipgraph.media.segments import Manifest, work_dir
from lipgraph.media.frame_source import keyframe_indices
from lipgraph.media.pingpong import PingPongReader
from lipgraph.media.resample import ResampledReader
from lipgraph.media.video import VideoReader
from media_fixtures import make_audio, pattern_frame
from lipgraph.tools.synthetic import clip_frames, graph_command, model_sets, speech_like

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH = os.path.join(ROOT, "configs", "graphs", "musetalk.yaml")
LOSSLESS = ["mux.codec=ffv1", "mux.pix_fmt=bgr0"]
FPS = 25
PATTERN = "F" * 12 + "C" * 16 + "F" * 12          # 40 frames: faces, cutaways, faces
AUDIO_SR = 44100


# ----- media -------------------------------------------------------------------------------
def encode_clip(path, frames, codec="libx264", gop=5):
    """RGB frames at FPS with a keyframe at least every `gop` frames (time base 1/FPS, which
    MPEG-4 part 2 needs), so damage stays within a few frames."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=FPS, options={"g": str(gop)})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def _packets(path, kind):
    with av.open(str(path)) as c:
        stream = c.streams.video[0] if kind == "video" else c.streams.audio[0]
        return [(p.pos, p.size, bytes(p), p.pts, p.duration, p.time_base)
                for p in c.demux(stream) if p.size]


def damage(src, dst, kind, picks=(), display=(), whole=()):
    """Copy `src` to `dst` with the middle half of some packets' payload overwritten: `picks`
    by file order, `display` by presentation order; those also in `whole` (display order) are
    overwritten whole, which an H.264 decoder rejects (the NAL sizes are gone) where it would
    conceal a damaged middle. Returns the damaged packets' (time, duration) in seconds."""
    data = bytearray(open(src, "rb").read())
    packets = _packets(src, kind)
    by_time = sorted(range(len(packets)), key=lambda i: packets[i][3])
    hit = []
    for i in list(picks) + [by_time[d] for d in display]:
        pos, size, payload, pts, dur, tb = packets[i]
        # the position is the payload's (mp4, avi) or its block header's (Matroska)
        off = pos if data[pos:pos + size] == payload else data.find(payload, pos, pos + size + 64)
        assert off >= pos, f"packet {i} not found at its position {pos}"
        a, b = off + size // 4, off + 3 * size // 4
        if by_time.index(i) in whole:
            a, b = off, off + size
        data[a:b] = b"\xff" * (b - a)
        hit.append((float(pts * tb), float(dur * tb)))
    open(dst, "wb").write(bytes(data))
    return hit


def affected(path, damaged_display):
    """Display indices a damaged frame can reach: its whole GOP (closed GOPs, keyframes of the
    undamaged file)."""
    keys = keyframe_indices(path) + [10**9]
    out = set()
    for d in damaged_display:
        start = max(k for k in keys if k <= d)
        out |= set(range(start, min(k for k in keys if k > d)))
    return out


# ----- reading damaged video ---------------------------------------------------------------
@pytest.mark.parametrize("codec,ext", [("libx264", "mp4"), ("libx264", "mkv"), ("mpeg4", "avi")])
def test_damaged_video_decodes_in_place(tmp_path, codec, ext):
    clean, bad = tmp_path / f"clean.{ext}", tmp_path / f"bad.{ext}"
    encode_clip(clean, [pattern_frame(i, 160, 96) for i in range(40)], codec)
    damaged = [13, 27]
    damage(clean, bad, "video", display=damaged, whole=[13])
    reach = affected(str(clean), damaged)
    ref = list(VideoReader(clean))
    got = list(VideoReader(bad))
    # every frame, in its place and at its time
    assert [f.index for f in got] == list(range(40))
    assert [f.time for f in got] == [f.time for f in ref]
    stand_ins = [f.index for f in got if f.undecodable]
    assert set(stand_ins) <= reach
    for f in got:
        if f.index not in reach:
            assert np.array_equal(f.image, ref[f.index].image), f.index
        elif f.undecodable:             # the previous decoded frame, shown again
            prev = max([g.index for g in got if g.index < f.index and not g.undecodable],
                       default=None)
            assert prev is not None and np.array_equal(f.image, got[prev].image)
    if codec == "libx264":
        assert stand_ins               # these packets do not decode (the counter is exercised)

    # from a seek into the damage, and in backward passes (decoded chunk by chunk from
    # keyframes): every frame in its place; outside the damaged GOPs, what reading through
    # gave (inside, a decoder that started at the keyframe may conceal differently)
    def agrees(frames):
        for f in frames:
            src = getattr(f, "source_index", f.index)
            if src not in reach:
                assert np.array_equal(f.image, got[src].image) and not f.undecodable, src
    for start in (min(reach), 14, 28):
        again = list(VideoReader(bad, start_index=start))
        assert [f.index for f in again] == list(range(start, 40))
        assert [f.time for f in again] == [f.time for f in ref[start:]]
        agrees(again)
    pp = list(PingPongReader(bad, 100, chunk=7))
    assert [p.source_index for p in pp] == [p.source_index for p in PingPongReader(clean, 100, chunk=7)]
    agrees(pp)
    rs = list(ResampledReader(bad, 30, 60))
    assert [r.time for r in rs] == [k / 30 for k in range(60)]
    assert [r.source_index for r in rs] == [r.source_index for r in ResampledReader(clean, 30, 60)]
    agrees(rs)


def test_undecodable_first_frames_take_the_first_decoded_one(tmp_path):
    clean, bad = tmp_path / "clean.mp4", tmp_path / "bad.mp4"
    encode_clip(clean, [pattern_frame(i, 160, 96) for i in range(20)])
    damage(clean, bad, "video", picks=[0])              # the first keyframe
    got = list(VideoReader(bad))
    assert [f.index for f in got] == list(range(20))
    assert [f.time for f in got] == [i / FPS for i in range(20)]
    first = next(f for f in got if not f.undecodable)
    assert first.index > 0 and all(f.undecodable for f in got[:first.index])
    assert all(np.array_equal(f.image, first.image) for f in got[:first.index])


def test_seek_onto_an_undecodable_keyframe_starts_a_keyframe_earlier(tmp_path, monkeypatch):
    """Resuming (or a backward pass) right after a damaged keyframe finds the previous
    decoded frame from the keyframe before, not by decoding the file from the top."""
    from lipgraph.media.frame_source import FrameSource
    clean, bad = tmp_path / "clean.mp4", tmp_path / "bad.mp4"
    encode_clip(clean, [pattern_frame(i, 160, 96) for i in range(40)])
    assert 20 in keyframe_indices(clean)
    damage(clean, bad, "video", display=[20], whole=[20])
    got = list(VideoReader(bad))
    assert got[20].undecodable and got[21].undecodable
    opened = []
    real = FrameSource._open
    monkeypatch.setattr(FrameSource, "_open", lambda self: (opened.append(1), real(self)))
    again = list(VideoReader(bad, start_index=21))
    assert len(opened) == 2                 # the reader's own and the one after the packet table
    assert [f.index for f in again] == list(range(21, 40))
    assert all(np.array_equal(a.image, got[a.index].image) for a in again)


# ----- reading damaged audio ---------------------------------------------------------------
@pytest.mark.parametrize("ext", ["m4a", "aac", "mp3"])
def test_damaged_audio_keeps_its_length_and_place(tmp_path, ext):
    clean, bad = tmp_path / f"clean.{ext}", tmp_path / f"bad.{ext}"
    make_audio(clean, sr=AUDIO_SR, signal=speech_like(2.0, AUDIO_SR))
    hit = damage(clean, bad, "audio", picks=[30, 55])
    sr = 16000
    ref = read_audio(clean, sr)
    events = []
    blocks = iter_audio_blocks(bad, sr, on_damage=lambda t, s: events.append((t, s)))
    got = np.concatenate([b[0] for b in blocks])
    assert got.size == ref.size
    # beyond the damaged packets (and the frames either side that the decoder's overlap, delay
    # and MP3's bit reservoir reach) every sample is where it was: nothing shifted
    near = np.zeros(ref.size, bool)
    for t, d in hit:
        near[max(0, int((t - 0.03) * sr)):int((t + d + 0.1) * sr)] = True
    assert np.abs(got - ref)[~near].max() < 1e-4
    if ext != "mp3":                    # the AAC decoder rejects these packets: silence
        assert len(events) == 2
        for (t, d), (at, seconds) in zip(hit, events):
            assert at == pytest.approx(t, abs=1e-6) and seconds == pytest.approx(d, abs=1e-6)
            inner = got[int((t + 0.004) * sr):int((t + d - 0.004) * sr)]
            assert inner.size and np.abs(inner).max() < 0.02


# ----- whole graph --------------------------------------------------------------------------
def run(weights, video, audio, out, sets=(), extra=(), expect=0, profile=None, timeout=300):
    prof = profile or str(out) + ".run.json"
    cmd = graph_command(GRAPH, str(video), str(audio), str(out),
                        list(model_sets(weights)) + LOSSLESS + list(sets),
                        "--quiet", "--no-trace", "--profile", prof, *extra)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc, prof


def counters(profile_path, stage):
    with open(profile_path) as f:
        return json.load(f)["stages"][stage]["counters"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, tiny_models):
    """The clip (H.264, keyframes every 5 frames), an AAC dub and the undamaged run's output."""
    folder = tmp_path_factory.mktemp("faults")
    video, dub, ref = folder / "clip.mp4", folder / "dub.m4a", folder / "ref.mkv"
    encode_clip(video, clip_frames(PATTERN))
    make_audio(dub, sr=AUDIO_SR, signal=speech_like(len(PATTERN) / FPS, AUDIO_SR))
    run(tiny_models, video, dub, ref)
    frames = list(VideoReader(ref))
    return {"folder": folder, "video": video, "dub": dub, "ref": ref, "weights": tiny_models,
            "frames": frames, "audio": read_audio(ref)}


def same_as_reference(clip, out, skip=()):
    """Frame count and timing as the undamaged run; cutaways exact, faces within float
    rounding (batches may be cut differently), outside `skip`."""
    got = list(VideoReader(out))
    ref = clip["frames"]
    assert len(got) == len(ref) == len(PATTERN)
    assert [f.time for f in got] == [f.time for f in ref]
    for g, r in zip(got, ref):
        if g.index in skip:
            continue
        if PATTERN[g.index] == "C":
            assert np.array_equal(g.image, r.image), g.index
        else:
            assert np.abs(g.image.astype(int) - r.image.astype(int)).max() <= 3, g.index
    return got


def test_damaged_video_through_the_graph(clip, tmp_path):
    bad, out = tmp_path / "bad.mp4", tmp_path / "out.mkv"
    damaged = [17, 31]                                  # a cutaway frame and a face frame
    damage(clip["video"], bad, "video", display=damaged, whole=damaged)
    stand_ins = [f.index for f in VideoReader(bad) if f.undecodable]
    assert stand_ins
    proc, prof = run(clip["weights"], bad, clip["dub"], out)
    assert f"bad.mp4: frame {stand_ins[0]} could not be decoded" in proc.stderr
    assert proc.stderr.count("could not be decoded") == 1          # warned once
    assert counters(prof, "video")["frames_repeated_undecodable"] == len(stand_ins)
    got = same_as_reference(clip, out, skip=affected(str(clip["video"]), damaged))
    for i in stand_ins:
        if PATTERN[i] == "C" and PATTERN[i - 1] == "C":    # a cutaway stood in for: untouched
            assert np.array_equal(got[i].image, got[i - 1].image)
    audio = read_audio(out)
    assert audio.size == clip["audio"].size and np.allclose(audio, clip["audio"], atol=1e-6)


def test_damaged_audio_through_the_graph(clip, tmp_path):
    bad, out = tmp_path / "bad.m4a", tmp_path / "out.mkv"
    hit = damage(clip["dub"], bad, "audio", picks=[20, 45])
    proc, prof = run(clip["weights"], clip["video"], bad, out)
    assert "bad.m4a: audio at" in proc.stderr and proc.stderr.count("could not be decoded") == 1
    assert counters(prof, "audio")["audio_packets_undecodable"] == 2
    # the mouths follow the audio; cutaways do not: those are the reference's, all of them
    same_as_reference(clip, out, skip={i for i, c in enumerate(PATTERN) if c == "F"})
    audio, ref = read_audio(out), clip["audio"]
    assert audio.size == ref.size
    sr = 16000
    near = np.zeros(ref.size, bool)
    for t, d in hit:
        near[max(0, int((t - 0.05) * sr)):int((t + d + 0.05) * sr)] = True
        assert np.abs(audio[int((t + 0.005) * sr):int((t + d - 0.005) * sr)]).max() < 0.02
    # the rest is the reference's audio where it was (the AAC encoder met other samples, so
    # not bit for bit); one sample of shift would be far larger than this
    assert np.abs(audio - ref)[~near].max() < 0.01
    assert np.abs(np.roll(ref, 1) - ref)[~near].max() > 0.02


# ----- disk full ---------------------------------------------------------------------------
WRITE_UNDER_LIMIT = r'''
import resource, signal, sys
import numpy as np
from lipgraph.media.writer import DiskFullError, VideoWriter, output_errors
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # write() then fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
out = sys.argv[1]
try:
    with output_errors(out), VideoWriter(out, 320, 240, 25, codec="ffv1", pix_fmt="bgr0") as w:
        for i in range(50):
            w.write(np.random.default_rng(i).integers(0, 256, (240, 320, 3), dtype=np.uint8))
except DiskFullError as exc:
    print(exc)
    sys.exit(3)
'''


def test_write_past_a_file_size_limit_names_the_output_and_leaves_nothing(tmp_path):
    """The writer under a file size limit (no root needed): the same error path as a full
    disk, EFBIG for ENOSPC."""
    out = tmp_path / "o.mkv"
    proc = subprocess.run([sys.executable, "-c", WRITE_UNDER_LIMIT, str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"cannot write {out}: the file is larger than the filesystem")
    assert os.listdir(tmp_path) == []


@contextlib.contextmanager
def small_disk(path, size):
    """A tmpfs of `size` bytes at `path`, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    os.makedirs(path)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk, leave):
    """Take all but `leave` bytes of the disk with a filler file (someone else's data)."""
    st = os.statvfs(disk)
    filler = os.path.join(disk, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def left_on(disk):
    """Files on the disk besides the filler, relative to it."""
    found = []
    for folder, _, files in os.walk(disk):
        found += [os.path.relpath(os.path.join(folder, f), disk) for f in files]
    return sorted(f for f in found if f != "filler")


def full_disk_failure(proc, out):
    err = proc.stderr
    assert "stage 'mux'" in err and f"cannot write {out}: the disk is full" in err, err[-3000:]
    assert not os.path.exists(out)


@pytest.mark.parametrize("where", ["segments", pytest.param("join", marks=pytest.mark.slow)])
def test_disk_full_keeps_finished_segments_and_resumes(clip, tmp_path, where):
    """`segments`: the disk fills while segments are written; `join`: every segment fits but
    the joined output does not."""
    size = os.path.getsize(clip["ref"])
    with small_disk(tmp_path / "disk", 3 * size) as disk:
        out = str(disk / "out.mkv")
        filler = fill(disk, size // 2 if where == "segments" else 3 * size // 2)
        sets = ["mux.segment_s=0.4"]                   # 4 segments of 10 frames
        # the profile goes elsewhere: writing it is the runner's business, not the output's
        prof = str(tmp_path / "run.json")
        proc, _ = run(clip["weights"], clip["video"], clip["dub"], out, sets, expect=1, profile=prof)
        full_disk_failure(proc, out)
        assert "run the same command with --resume" in proc.stderr
        # the finished segments and their manifest, nothing else: no temporary file
        m = Manifest.load(work_dir(out))
        kept = len(m.segments)
        assert (1 <= kept < 4) if where == "segments" else kept == 4
        assert m.check_files() == []
        folder = os.path.basename(work_dir(out))
        assert left_on(disk) == sorted([f"{folder}/manifest.json"] +
                                            [f"{folder}/{s['file']}" for s in m.segments])
        assert not [f for f in os.listdir(tmp_path) if "partial" in f or f.endswith(".tmp")]

        os.unlink(filler)                               # space freed
        proc, _ = run(clip["weights"], clip["video"], clip["dub"], out, sets, ["--resume"],
                      profile=prof)
        assert f"({kept} segment(s) done)" in proc.stderr
        assert left_on(disk) == ["out.mkv"]
        same_as_reference(clip, out)
        assert read_audio(out).size == clip["audio"].size


def test_disk_full_without_segments_leaves_nothing(clip, tmp_path):
    size = os.path.getsize(clip["ref"])
    with small_disk(tmp_path / "disk", 2 * size) as disk:
        out = str(disk / "out.mkv")
        fill(disk, size // 2)
        proc, _ = run(clip["weights"], clip["video"], clip["dub"], out, ["mux.segment_s=0"],
                      expect=1, profile=str(tmp_path / "run.json"))
        full_disk_failure(proc, out)
        assert left_on(disk) == []
