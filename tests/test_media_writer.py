import os

import av
import cv2
import numpy as np
import pytest
from skimage import data

import lipgraph.media.writer as writer_module
from lipgraph.media.audio import read_audio
from lipgraph.media.probe import probe_video
from lipgraph.media.video import VideoReader
from lipgraph.media.writer import VideoWriter
from media_fixtures import dominant_frequency, make_audio, pattern_frame, psnr, read_pattern_index, vfr_times


def _stream_durations(path):
    with av.open(str(path)) as container:
        return {s.type: float(s.duration * s.time_base) for s in container.streams}


def _leftovers(folder):
    return [name for name in os.listdir(folder) if ".partial" in name]


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001])
def test_frames_fps_duration(tmp_path, fps):
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 96, 64, fps) as writer:
        for i in range(30):
            writer.write(pattern_frame(i, 96, 64))
        assert writer.frames_written == 30
    info = probe_video(path)
    assert info.frame_count == 30
    assert info.fps == pytest.approx(fps, abs=1e-9)  # not PyAV's silent 24 fps
    assert info.duration_s == pytest.approx(30 / fps, abs=1e-6)
    frames = list(VideoReader(path))
    assert [read_pattern_index(f.image) for f in frames] == list(range(30))
    np.testing.assert_allclose([f.time for f in frames], np.arange(30) / fps, atol=2e-5)
    assert not _leftovers(tmp_path)


def test_colour_matrix_is_tagged(tmp_path):
    path = tmp_path / "tag.mp4"
    with VideoWriter(path, 1280, 720, 25.0, preset="ultrafast") as writer:
        writer.write(np.full((720, 1280, 3), 128, np.uint8))
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    # BT.601 limited range, as converted; untagged HD would be shown as BT.709
    assert (int(frame.colorspace), int(frame.color_range)) == (6, 1)


def test_temp_file_until_close(tmp_path):
    path = tmp_path / "final.mp4"
    writer = VideoWriter(path, 64, 48, 25.0)
    temp = writer.temp_path
    assert os.path.dirname(temp) == str(tmp_path)
    assert os.path.basename(temp).startswith(".") and ".partial" in temp
    for i in range(80):  # past x264's lookahead, so packets reach the file
        writer.write(pattern_frame(i, 64, 48))
    assert os.path.exists(temp) and not path.exists()
    writer.close()
    assert path.exists() and not os.path.exists(temp)
    writer.close()  # idempotent


def test_vfr_times_survive(tmp_path):
    path = tmp_path / "vfr.mp4"
    times = vfr_times(30, 25.0, seed=3)
    with VideoWriter(path, 64, 48, 25.0) as writer:
        for i, t in enumerate(times):
            writer.write(pattern_frame(i, 64, 48), t)
    frames = list(VideoReader(path))
    np.testing.assert_allclose([f.time for f in frames], times, atol=1e-9)
    assert [read_pattern_index(f.image) for f in frames] == list(range(30))


@pytest.mark.parametrize("audio_seconds,audio_name", [(3.0, "long.wav"), (0.4, "short.m4a"), (1.2, "tone.mp3")])
def test_audio_matches_video_duration(tmp_path, audio_seconds, audio_name):
    audio = tmp_path / audio_name
    make_audio(audio, seconds=audio_seconds, sr=44100, freq=500.0)
    path = tmp_path / "av.mp4"
    fps = 30000 / 1001
    with VideoWriter(path, 64, 48, fps, audio_path=audio) as writer:
        for i in range(45):
            writer.write(pattern_frame(i, 64, 48))
    durations = _stream_durations(path)
    video_s = 45 / fps
    assert durations["video"] == pytest.approx(video_s, abs=1e-6)
    assert abs(durations["audio"] - video_s) <= 1 / fps
    decoded = read_audio(path)
    assert abs(decoded.size / 16000 - video_s) <= 1 / fps
    heard = decoded[: int(min(audio_seconds, video_s) * 16000) - 800]
    assert dominant_frequency(heard, 16000) == pytest.approx(500.0, abs=3.0)
    if audio_seconds < video_s:  # padded with silence, not looped
        assert np.abs(decoded[int((audio_seconds + 0.1) * 16000) :]).max() < 0.01


def test_audio_offset_and_duration(tmp_path):
    audio = tmp_path / "step.wav"
    signal = np.zeros(32000, np.float32)
    signal[16000:] = 0.5 * np.sin(2 * np.pi * 700 * np.arange(16000) / 16000)
    make_audio(audio, sr=16000, signal=signal)  # 1 s silence, then 1 s tone
    frames = [pattern_frame(i, 64, 48) for i in range(25)]

    skipped = tmp_path / "skip.mp4"
    with VideoWriter(skipped, 64, 48, 25.0, audio_path=audio, audio_offset=1.0) as writer:
        for f in frames:
            writer.write(f)
    x = read_audio(skipped)
    assert np.abs(x[1000:15000]).mean() > 0.25  # starts right at the tone

    led = tmp_path / "lead.mp4"
    with VideoWriter(led, 64, 48, 25.0, audio_path=audio, audio_offset=-0.5, duration_s=2.0) as writer:
        for f in frames:
            writer.write(f)
    assert _stream_durations(led)["audio"] == pytest.approx(2.0, abs=0.005)
    x = read_audio(led)
    assert np.abs(x[: int(1.45 * 16000)]).max() < 0.02  # 0.5 s lead + 1 s source silence
    assert np.abs(x[int(1.55 * 16000) :]).mean() > 0.25


def test_abort_leaves_nothing(tmp_path):
    path = tmp_path / "gone.mp4"
    writer = VideoWriter(path, 64, 48, 25.0)
    writer.write(pattern_frame(0, 64, 48))
    writer.abort()
    assert not path.exists() and not _leftovers(tmp_path)
    with pytest.raises(ValueError):
        writer.write(pattern_frame(1, 64, 48))


def test_exception_inside_with_aborts(tmp_path):
    path = tmp_path / "gone.mp4"
    audio = tmp_path / "a.wav"
    make_audio(audio, seconds=1.0)
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, 64, 48, 25.0, audio_path=audio) as writer:
            writer.write(pattern_frame(0, 64, 48))
            raise RuntimeError("boom")
    assert not path.exists() and not _leftovers(tmp_path)


def test_failed_close_removes_temp_and_reraises(tmp_path, monkeypatch):
    path = tmp_path / "gone.mp4"
    writer = VideoWriter(path, 64, 48, 25.0)
    writer.write(pattern_frame(0, 64, 48))

    def refuse(src, dst):
        raise OSError("disk says no")

    monkeypatch.setattr(writer_module.os, "replace", refuse)
    with pytest.raises(OSError, match="disk says no"):
        writer.close()
    assert not path.exists() and not _leftovers(tmp_path)


def test_close_without_frames_fails_cleanly(tmp_path):
    path = tmp_path / "empty.mp4"
    writer = VideoWriter(path, 64, 48, 25.0)
    with pytest.raises(ValueError, match="no frames"):
        writer.close()
    assert not path.exists() and not _leftovers(tmp_path)


def test_bad_input_is_refused(tmp_path):
    path = tmp_path / "x.mp4"
    with VideoWriter(path, 64, 48, 25.0) as writer:
        with pytest.raises(ValueError, match="48x64x3"):
            writer.write(np.zeros((48, 63, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((48, 64, 3), np.float32))
        writer.write(pattern_frame(0, 64, 48), 0.5)
        with pytest.raises(ValueError, match="increase"):
            writer.write(pattern_frame(1, 64, 48), 0.5)
    with pytest.raises(ValueError, match="extension"):
        VideoWriter(tmp_path / "x.gif", 64, 48, 25.0)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        VideoWriter(tmp_path / "no_such_dir" / "x.mp4", 64, 48, 25.0)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        VideoWriter(tmp_path / "y.mp4", 64, 48, 25.0, audio_path=tmp_path / "missing.wav")
    assert not _leftovers(tmp_path)


def test_odd_size_is_padded_not_cropped(tmp_path):
    path = tmp_path / "odd.mp4"
    frames = [pattern_frame(i, 101, 77) for i in range(5)]
    with VideoWriter(path, 101, 77, 25.0) as writer:
        assert (writer.out_width, writer.out_height) == (102, 78)
        for f in frames:
            writer.write(f)
    info = probe_video(path)
    assert (info.width, info.height) == (102, 78)  # one pixel larger each way
    decoded = list(VideoReader(path))
    assert [read_pattern_index(f.image) for f in decoded] == list(range(5))
    image = decoded[2].image.astype(int)
    assert psnr(decoded[2].image[:77, :101], frames[2]) > 28
    # the added column / row repeat the last ones
    assert np.abs(image[:, 101] - image[:, 100]).mean() < 2
    assert np.abs(image[77] - image[76]).mean() < 2


def test_odd_size_kept_with_yuv444p(tmp_path):
    path = tmp_path / "odd444.mp4"
    with VideoWriter(path, 101, 77, 25.0, pix_fmt="yuv444p") as writer:
        assert (writer.out_width, writer.out_height) == (101, 77)
        writer.write(pattern_frame(0, 101, 77))
    assert next(VideoReader(path)).image.shape == (77, 101, 3)


def test_content_quality(tmp_path):
    image = data.astronaut()[::2, ::2].copy()  # 256x256, a real face
    lossless = tmp_path / "q0.mp4"
    with VideoWriter(lossless, 256, 256, 25.0, crf=0, pix_fmt="yuv444p") as writer:
        writer.write(image)
    back = next(VideoReader(lossless)).image
    assert np.abs(back.astype(int) - image).max() <= 3  # only RGB<->YUV rounding

    normal = tmp_path / "q18.mp4"
    smooth = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    with VideoWriter(normal, 256, 256, 25.0, crf=18) as writer:
        for _ in range(5):
            writer.write(smooth)
    back = list(VideoReader(normal))[-1].image
    # 4:2:0 chroma alone caps RGB PSNR of this image near 36 dB; luma is the codec's part
    assert psnr(back, smooth) > 32.5
    luma = np.array([0.299, 0.587, 0.114])
    assert psnr(np.round(back @ luma).astype(np.uint8), np.round(smooth @ luma).astype(np.uint8)) > 38


def test_lossless_mkv_with_audio(tmp_path):
    """FFV1 in Matroska: frames come back bit-exact, and the audio keeps its timing even
    though Matroska rewrites the stream time base to 1/1000 when the header is written."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (77, 101, 3), dtype=np.uint8) for _ in range(25)]
    audio = tmp_path / "a.wav"
    make_audio(audio, seconds=2.0, sr=16000)
    out = tmp_path / "o.mkv"
    with VideoWriter(out, 101, 77, 25.0, codec="ffv1", pix_fmt="bgr0", audio_path=audio) as w:
        for f in frames:
            w.write(f)
    got = [f.image for f in VideoReader(out)]
    assert len(got) == 25 and all(np.array_equal(a, b) for a, b in zip(frames, got))
    decoded = read_audio(out)
    assert abs(len(decoded) / 16000 - 1.0) <= 1 / 25
