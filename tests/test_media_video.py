import weakref

import cv2
import numpy as np
import pytest

from lipgraph.media.decode import MediaError, MediaFileNotFoundError
from lipgraph.media.pingpong import PingPongReader, pingpong_indices
from lipgraph.media.probe import probe_video
from lipgraph.media.video import VideoReader
from media_fixtures import make_audio, make_video, pattern_frame, psnr, read_pattern_index, vfr_times


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001])
def test_probe_constant_rate(tmp_path, fps):
    path = tmp_path / "cfr.mp4"
    make_video(path, 30, fps=fps, size=(96, 64))
    info = probe_video(path)
    assert isinstance(info.fps, float)
    assert info.fps == pytest.approx(fps, abs=1e-9)  # 29.97..., never 29 or 30
    assert (info.width, info.height) == (96, 64)
    assert info.frame_count == 30 and info.frame_count_exact
    assert info.duration_s == pytest.approx(30 / fps, abs=1e-6)
    assert info.rotation == 0
    assert info.codec == "h264"


def test_probe_estimates_frame_count_when_container_does_not_know(tmp_path):
    path = tmp_path / "cfr.mkv"
    make_video(path, 30, fps=25.0)
    info = probe_video(path)
    assert not info.frame_count_exact
    assert abs(info.frame_count - 30) <= 1


def test_probe_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MediaFileNotFoundError, match="nope.mp4"):
        probe_video(missing)
    with pytest.raises(FileNotFoundError):
        VideoReader(missing)

    wav = tmp_path / "voice.wav"
    make_audio(wav, 0.2)
    with pytest.raises(MediaError, match=r"voice\.wav.*no video stream"):
        probe_video(wav)

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 10)
    with pytest.raises(MediaError, match="junk.mp4"):
        probe_video(junk)


def test_reader_cfr_frames_in_order(tmp_path):
    path = tmp_path / "a.mp4"
    make_video(path, 40, fps=30000 / 1001, size=(96, 64))
    with VideoReader(path) as reader:
        frames = list(reader)
    assert [f.index for f in frames] == list(range(40))
    assert [read_pattern_index(f.image) for f in frames] == list(range(40))
    times = np.array([f.time for f in frames])
    np.testing.assert_allclose(times, np.arange(40) * 1001 / 30000, atol=1e-6)
    img = frames[5].image
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
    assert psnr(img, pattern_frame(5, 96, 64)) > 25


@pytest.mark.parametrize("ext,tol", [("mp4", 1e-9), ("mkv", 5.1e-4)])  # mkv keeps milliseconds
def test_reader_vfr_times_are_the_written_times(tmp_path, ext, tol):
    path = tmp_path / f"vfr.{ext}"
    written = make_video(path, 30, fps=25.0, vfr=True)
    assert np.ptp(np.diff(written)) > 0.01  # really irregular
    frames = list(VideoReader(path))
    assert len(frames) == 30
    np.testing.assert_allclose([f.time for f in frames], written, atol=tol)
    assert [read_pattern_index(f.image) for f in frames] == list(range(30))


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_gives_the_upright_picture(tmp_path, rotation):
    path = tmp_path / f"rot{rotation}.mp4"
    make_video(path, 4, size=(96, 64), rotation=rotation)
    info = probe_video(path)
    assert info.rotation == rotation
    swapped = rotation in (90, 270)
    assert (info.coded_width, info.coded_height) == ((64, 96) if swapped else (96, 64))
    assert (info.width, info.height) == (96, 64)

    frames = list(VideoReader(path))
    assert [read_pattern_index(f.image) for f in frames] == [0, 1, 2, 3]
    assert frames[0].image.shape == (64, 96, 3) and frames[0].image.flags.c_contiguous
    assert psnr(frames[0].image, pattern_frame(0, 96, 64)) > 25
    # Independent check of the sign convention: OpenCV's FFmpeg backend
    # auto-rotates by the display matrix the way players do.
    capture = cv2.VideoCapture(str(path))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    assert bgr.shape == (64, 96, 3)
    assert np.abs(bgr[..., ::-1].astype(int) - frames[0].image).mean() < 1.0


def test_odd_size_is_preserved(tmp_path):
    path = tmp_path / "odd.mkv"
    make_video(path, 5, size=(101, 77))  # libx264 yuv444p allows odd sizes
    info = probe_video(path)
    assert (info.width, info.height) == (101, 77)
    frames = list(VideoReader(path))
    assert frames[0].image.shape == (77, 101, 3)
    assert frames[0].image.flags.c_contiguous  # FFmpeg pads rows; we must not leak that
    assert [read_pattern_index(f.image) for f in frames] == list(range(5))


def test_reader_streams_one_frame_at_a_time(tmp_path):
    path = tmp_path / "long.mp4"
    make_video(path, 120, size=(96, 64))
    reader = VideoReader(path)
    assert iter(reader) is reader  # an iterator, not a list
    live = []
    count = 0
    for frame in reader:
        live.append(weakref.ref(frame.image))
        count += 1
        if count % 10 == 0:
            del frame
            alive = sum(ref() is not None for ref in live)
            assert alive <= 3, f"{alive} decoded frames still held by the reader"
    reader.close()
    assert count == 120


@pytest.mark.parametrize("gop", [12, None])  # None: x264 default, a single keyframe here
def test_seek_start_index_matches_a_full_read(tmp_path, gop):
    path = tmp_path / "seek.mp4"
    make_video(path, 60, size=(96, 64), gop=gop)
    full = list(VideoReader(path))
    for start in (1, 13, 24, 59):
        part = list(VideoReader(path, start_index=start))
        assert [f.index for f in part] == list(range(start, 60))
        assert [f.time for f in part] == [f.time for f in full[start:]]
        for a, b in zip(part, full[start:]):
            assert np.array_equal(a.image, b.image)


def test_seek_start_index_vfr(tmp_path):
    path = tmp_path / "seekv.mp4"
    written = make_video(path, 40, vfr=True, gop=8)
    part = list(VideoReader(path, start_index=21))
    assert [f.index for f in part] == list(range(21, 40))
    np.testing.assert_allclose([f.time for f in part], written[21:], atol=1e-9)
    assert [read_pattern_index(f.image) for f in part] == list(range(21, 40))


def test_start_time(tmp_path):
    path = tmp_path / "t.mp4"
    make_video(path, 50, fps=25.0, gop=10)
    assert next(VideoReader(path, start_time=0.48)).index == 12  # exactly on frame 12
    first = next(VideoReader(path, start_time=0.5))  # between frames 12 and 13
    assert first.index == 13 and first.time == pytest.approx(0.52)
    assert read_pattern_index(first.image) == 13


def test_stream_without_pts_falls_back_to_index_over_fps(tmp_path):
    path = tmp_path / "raw.h264"  # elementary stream: packets carry no pts
    make_video(path, 20, fps=25.0)
    frames = list(VideoReader(path))
    assert len(frames) == 20
    np.testing.assert_allclose([f.time for f in frames], np.arange(20) / 25.0, atol=1e-9)
    part = list(VideoReader(path, start_index=7))  # cannot seek: decoded from the top
    assert [f.index for f in part] == list(range(7, 20))
    assert [read_pattern_index(f.image) for f in part] == list(range(7, 20))


def _musetalk_cycle(n_src, n_out):
    cycle = list(range(n_src)) + list(range(n_src))[::-1]
    return [cycle[i % len(cycle)] for i in range(n_out)]


def _latentsync_loop(n_src, n_out):
    if n_out <= n_src:
        return list(range(n_out))
    loops = -(-n_out // n_src)
    seq = []
    for i in range(loops):
        seq += list(range(n_src)) if i % 2 == 0 else list(range(n_src))[::-1]
    return seq[:n_out]


def test_pingpong_indices_match_upstream():
    assert list(pingpong_indices(4, 3)) == [0, 1, 2]
    assert list(pingpong_indices(4, 4)) == [0, 1, 2, 3]
    assert list(pingpong_indices(4, 10)) == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1]  # turning frames repeat
    assert list(pingpong_indices(1, 3)) == [0, 0, 0]
    for n_src in (1, 2, 5, 7):
        for n_out in (0, 1, 3, 7, 10, 23):
            got = list(pingpong_indices(n_src, n_out))
            assert got == _musetalk_cycle(n_src, n_out) == _latentsync_loop(n_src, n_out)
    with pytest.raises(ValueError):
        list(pingpong_indices(0, 5))


@pytest.mark.parametrize("n_out", [13, 20, 50])  # shorter, equal, 2.5 passes
def test_pingpong_reader(tmp_path, n_out):
    path = tmp_path / "pp.mp4"
    make_video(path, 20, fps=25.0, gop=6)
    chunk = 4
    reader = PingPongReader(path, n_out, chunk=chunk)
    assert reader.n_src == 20
    out, live, worst = [], [], 0
    for frame in reader:
        out.append((frame.index, frame.source_index, read_pattern_index(frame.image), frame.time))
        live.append(weakref.ref(frame.image))
        del frame  # arrays die by reference counting; no gc pass needed
        worst = max(worst, sum(ref() is not None for ref in live))
    reader.close()
    expected = list(pingpong_indices(20, n_out))
    assert [o[0] for o in out] == list(range(n_out))
    assert [o[1] for o in out] == expected
    assert [o[2] for o in out] == expected  # the pixels really are those frames
    times = np.array([o[3] for o in out])
    np.testing.assert_allclose(times, np.arange(n_out) / 25.0, atol=1e-9)
    assert reader.max_chunk_held <= chunk
    assert worst <= chunk + 2  # never the whole video in memory


def test_pingpong_times_follow_source_durations(tmp_path):
    path = tmp_path / "ppv.mp4"
    written = make_video(path, 10, fps=25.0, vfr=True, gop=4)
    info = probe_video(path)
    frames = list(PingPongReader(path, 25, chunk=3))
    durations = list(np.diff(written)) + [1.0 / info.fps]  # last frame lasts 1/fps
    expected = np.concatenate([[0.0], np.cumsum([durations[i] for i in pingpong_indices(10, 25)])])[:25]
    times = np.array([f.time for f in frames])
    assert np.all(np.diff(times) > 0)
    np.testing.assert_allclose(times, expected, atol=1e-9)
    np.testing.assert_allclose([f.source_time for f in frames],
                               [written[i] for i in pingpong_indices(10, 25)], atol=1e-9)


def test_pingpong_rotated(tmp_path):
    path = tmp_path / "ppr.mp4"
    make_video(path, 6, size=(96, 64), rotation=90, gop=2)
    frames = list(PingPongReader(path, 9, chunk=2))
    assert all(f.image.shape == (64, 96, 3) for f in frames)
    assert [read_pattern_index(f.image) for f in frames] == list(pingpong_indices(6, 9))


def test_pingpong_resumes_at_any_output_index(tmp_path):
    """Starting at output index k gives exactly the frames, source indices and output times
    of an uninterrupted read from k on (resuming a job mid ping-pong)."""
    path = tmp_path / "pp.mp4"
    make_video(path, [pattern_frame(i, 96, 64) for i in range(23)], times=vfr_times(23, 25.0, seed=1),
               size=(96, 64), gop=5)

    def read(start):
        return [(f.index, f.source_index, f.time, read_pattern_index(f.image))
                for f in PingPongReader(path, 80, chunk=4, start=start)]
    full = read(0)
    for start in (1, 22, 23, 30, 45, 46, 79):
        assert read(start) == full[start:], start
