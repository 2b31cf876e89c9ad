import inspect

import numpy as np
import pytest

from lipgraph.media.audio import AudioReader, iter_audio_blocks, probe_audio, read_audio
from lipgraph.media.decode import MediaError
from media_fixtures import dominant_frequency, make_audio, make_video, sine

SR = 16000


@pytest.mark.parametrize(
    "name,sr,codec",
    [
        ("a.wav", 16000, "pcm_s16le"),
        ("a.wav", 44100, "pcm_s16le"),
        ("a.mp3", 44100, "mp3"),
        ("a.m4a", 44100, "aac"),
        ("a.m4a", 16000, "aac"),  # 1024-sample AAC frames = 64 ms of end padding to cut
        ("a.flac", 48000, "flac"),
        ("a.ogg", 48000, "opus"),
    ],
)
def test_read_audio_formats(tmp_path, name, sr, codec):
    path = tmp_path / name
    make_audio(path, seconds=1.5, sr=sr, freq=440.0)
    info = probe_audio(path)
    assert info.sample_rate == sr and info.channels == 1
    assert codec in info.codec
    x = read_audio(path, sr=SR)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(x.size - round(1.5 * SR)) <= 0.005 * SR  # within 5 ms
    assert dominant_frequency(x, SR) == pytest.approx(440.0, abs=2.0)
    assert 0.4 < np.abs(x[SR // 4 : -SR // 4]).max() < 0.6  # amplitude 0.5 kept


def test_exact_length_after_resampling(tmp_path):
    path = tmp_path / "b.wav"
    make_audio(path, seconds=2.345, sr=44100, freq=1000.0)
    x = read_audio(path, sr=SR)
    assert x.size == round(2.345 * SR)  # resampler flushed, nothing lost
    # the tail is real signal, not the resampler's silence
    assert np.abs(x[-200:]).max() > 0.3


def test_audio_track_of_a_video(tmp_path):
    path = tmp_path / "talk.mp4"
    make_video(path, 50, fps=25.0, audio=330.0, audio_sr=44100)  # 2 s
    info = probe_audio(path)
    assert info.duration_s == pytest.approx(2.0, abs=0.03)
    x = read_audio(path)
    assert abs(x.size - 2 * SR) <= 0.005 * SR
    assert dominant_frequency(x, SR) == pytest.approx(330.0, abs=2.0)


def test_stereo_downmix(tmp_path):
    path = tmp_path / "st.wav"
    left = sine(440.0, 1.0, SR, amplitude=0.6)
    right = sine(1000.0, 1.0, SR, amplitude=0.2)
    make_audio(path, sr=SR, signal=np.stack([left, right]))
    assert probe_audio(path).channels == 2
    mean = read_audio(path)
    np.testing.assert_allclose(mean, (left + right) / 2, atol=2e-4)  # like librosa's mono
    mixed = read_audio(path, downmix="ffmpeg")  # like `ffmpeg -ac 1`: louder
    assert np.abs(mixed).max() > 1.2 * np.abs(mean).max()
    with pytest.raises(ValueError):
        read_audio(path, downmix="left")


def test_reader_chunks(tmp_path):
    path = tmp_path / "c.flac"
    make_audio(path, seconds=2.3, sr=48000, freq=440.0)
    reader = AudioReader(path, sample_rate=SR, chunk_seconds=0.5)
    assert iter(reader) is reader
    chunks = list(reader)
    reader.close()
    assert [c.size for c in chunks] == [8000, 8000, 8000, 8000, 4800]
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    assert reader.samples_read == 36800
    np.testing.assert_array_equal(np.concatenate(chunks), read_audio(path))


def test_decoding_is_lazy(tmp_path):
    path = tmp_path / "d.wav"
    make_audio(path, seconds=3.0, sr=SR)
    blocks = iter_audio_blocks(path, SR)
    assert inspect.isgenerator(blocks)
    first = next(blocks)
    assert first.shape[0] == 1 and first.shape[1] < 3 * SR  # not the whole file at once
    blocks.close()


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        probe_audio(tmp_path / "missing.wav")
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        AudioReader(tmp_path / "missing.wav")
    silent = tmp_path / "silent.mp4"
    make_video(silent, 5)
    with pytest.raises(MediaError, match=r"silent\.mp4.*no audio stream"):
        read_audio(silent)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(MediaError, match="junk.mp3"):
        probe_audio(junk)
