import hashlib
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from lipgraph.media.audio_features import (
    WINDOW_SAMPLES,
    AudioFeatureStream,
    NeedMoreAudio,
    fps_fraction,
    frame_count,
    frame_start_step,
    latentsync_mel_peak,
    musetalk_pad_unit,
    time_start_step,
)
from lipgraph.models.whisper import (
    N_FFT,
    WhisperAudioEncoder,
    config_from_openai_dims,
    log_mel,
    mel_filters,
)
from tests.audio_oracle import reference_features

SR = 16000
FPS_VALUES = [25, 29.97, 30, 60]
DIMS = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
    n_vocab=100, n_text_ctx=32, n_text_state=64, n_text_head=2, n_text_layer=1,
)
LAYERS = DIMS["n_audio_layer"] + 1  # hidden states per step
D = DIMS["n_audio_state"]


class _MemoEncoder(WhisperAudioEncoder):
    """Real random-weight encoder whose per-window outputs are remembered by input bytes,
    so the oracle and the streams of one clip share encoder runs."""

    def __init__(self, config):
        super().__init__(config)
        self._memo: dict = {}

    def hidden_states(self, mel, final_layer_norm=True):
        mel = mel if mel.dim() == 3 else mel[None]
        out = []
        for m in mel:
            key = (hashlib.sha1(m.contiguous().numpy().tobytes()).hexdigest(), final_layer_norm)
            if key not in self._memo:
                self._memo[key] = super().hidden_states(m[None], final_layer_norm)[0]
            out.append(self._memo[key])
        return torch.stack(out)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    enc = _MemoEncoder(config_from_openai_dims(DIMS))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return enc.eval().requires_grad_(False)


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonics plus noise, with a stretch of digital silence."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t) ** 2
    x = env * (0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 720 * t))
    x += 0.02 * rng.standard_normal(n)
    x[int(0.3 * n) : int(0.33 * n)] = 0.0
    return x.astype(np.float32)


def _stream(encoder, flavour, fps, pcm, frames, seed=0, mel_peak=None, at_time=None, max_chunk=30000):
    """Drive a stream the way a pipeline does: ask, push more audio on NeedMoreAudio, repeat."""
    rng = np.random.default_rng(seed)
    stream = AudioFeatureStream(encoder, flavour, fps, mel_peak=mel_peak)
    pos, out = 0, {}
    for i in frames:
        while True:
            try:
                out[i] = stream.features(i) if at_time is None else stream.features_at_time(at_time(i))
                break
            except NeedMoreAudio as need:
                assert need.samples_needed > stream.samples_received
                if pos >= len(pcm):
                    if stream.closed:
                        pytest.fail(f"frame {i}: still asks for audio after the end")
                    stream.close()
                    continue
                size = int(rng.integers(1, max_chunk))
                stream.push(pcm[pos : pos + size])
                pos += size
        assert len(stream.held_windows) <= 2
        assert stream.buffered_samples <= WINDOW_SAMPLES + N_FFT + max_chunk
    return stream, out


def _frames_with_gaps(n: int) -> list[int]:
    # a cutaway (a run of skipped frames) and some scattered skips
    return [i for i in range(n) if not (0.4 * n <= i < 0.55 * n) and i % 13 != 5]


def _check_stream_equals_reference(encoder, flavour, fps, seconds, seed):
    pcm = _speechlike(seconds, seed)
    ref = reference_features(pcm, fps, encoder, flavour)
    assert ref.shape == (frame_count(len(pcm), fps), 10 * LAYERS, D)
    peak = None
    if flavour == "latentsync":
        peak = latentsync_mel_peak(pcm[a : a + 7919] for a in range(0, len(pcm), 7919))
    frames = _frames_with_gaps(len(ref))
    stream, got = _stream(encoder, flavour, fps, pcm, frames, seed=seed, mel_peak=peak)
    for i in frames:
        np.testing.assert_allclose(got[i], ref[i], rtol=1e-5, atol=1e-5, err_msg=f"frame {i}")
    assert stream.frame_count == len(ref)
    assert stream.windows_encoded == math.ceil(seconds / 30)


@pytest.mark.parametrize("flavour", ["musetalk", "latentsync"])
@pytest.mark.parametrize("fps", FPS_VALUES)
@pytest.mark.parametrize("seconds", [29.5, 31.0])
def test_stream_equals_reference(encoder, flavour, fps, seconds):
    _check_stream_equals_reference(encoder, flavour, fps, seconds, seed=int(seconds))


@pytest.mark.parametrize("flavour", ["musetalk", "latentsync"])
def test_stream_equals_reference_three_windows(encoder, flavour):
    _check_stream_equals_reference(encoder, flavour, 29.97, 61.0, seed=61)


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["musetalk", "latentsync"])
@pytest.mark.parametrize("fps", [25, 30, 60, Fraction(30000, 1001), 24])
def test_stream_equals_reference_three_windows_all_rates(encoder, flavour, fps):
    _check_stream_equals_reference(encoder, flavour, fps, 61.0, seed=62)


@pytest.mark.parametrize("flavour", ["musetalk", "latentsync"])
def test_skipped_window_is_never_encoded(encoder, flavour):
    pcm = _speechlike(61.0, 3)
    ref = reference_features(pcm, 25, encoder, flavour)
    # frames before 28 s and from 60.4 s on: the 30..60 s window is not needed
    frames = list(range(0, 700)) + list(range(1510, len(ref)))
    peak = latentsync_mel_peak([pcm]) if flavour == "latentsync" else None
    stream, got = _stream(encoder, flavour, 25, pcm, frames, mel_peak=peak)
    assert stream.windows_encoded == 2
    for i in frames:
        np.testing.assert_allclose(got[i], ref[i], rtol=1e-5, atol=1e-5)


def test_latentsync_without_peak_matches_short_clips(encoder):
    # Within one window the window's own peak is the clip's peak.
    pcm = _speechlike(12.0, 4)
    ref = reference_features(pcm, 25, encoder, "latentsync")
    _, got = _stream(encoder, "latentsync", 25, pcm, range(len(ref)))
    np.testing.assert_allclose(np.stack([got[i] for i in range(len(ref))]), ref, rtol=1e-5, atol=1e-5)


def test_latentsync_mel_peak_is_whole_clip_peak():
    pcm = _speechlike(35.0, 5)
    pcm[WINDOW_SAMPLES:] *= 2                       # the loudest part is after the first window
    x = torch.from_numpy(pcm)
    spec = torch.stft(x, 400, 160, window=torch.hann_window(400), center=True, return_complex=True)[:, :-1]
    expected = torch.clamp(mel_filters("openai") @ spec.abs() ** 2, min=1e-10).log10().max().item()
    for size in (1, 997, 480040, len(pcm)):
        chunks = (pcm[a : a + size] for a in range(0, len(pcm), size)) if size > 1 else [pcm[:300], pcm[300:]]
        assert latentsync_mel_peak(chunks) == pytest.approx(expected, abs=1e-6)
    # the peak is not at the start: a per-window peak would differ in the first window
    first = torch.stft(x[:WINDOW_SAMPLES], 400, 160, window=torch.hann_window(400), return_complex=True)
    assert torch.clamp(mel_filters("openai") @ first.abs() ** 2, min=1e-10).log10().max().item() < expected - 0.1


# ----------------------------------------------------------------------------- index rules


def test_fps_is_exact_and_never_truncated():
    assert fps_fraction(29.97) == Fraction(2997, 100)
    assert fps_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert fps_fraction(23.976) == Fraction(2997, 125)
    assert fps_fraction(Fraction(24000, 1001)) == Fraction(24000, 1001)
    assert fps_fraction(np.int64(25)) == 25
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            fps_fraction(bad)


def test_frame_count_rule():
    n = 61 * SR
    assert frame_count(n, 29.97) == 1828  # floor(61 * 29.97); int(29.97) would give 1769
    assert frame_count(n, 25) == 1525
    assert frame_count(n - 1, 25) == 1524
    assert frame_count(640, 25) == 1 and frame_count(639, 25) == 0
    assert frame_count(10 * SR, Fraction(30000, 1001)) == 299  # 299.7
    for fps, ref in ((29.97, Fraction(2997, 100)), (60, Fraction(60)), (30000 / 1001, Fraction(30000, 1001))):
        for n in range(0, 20 * SR, 4567):
            assert frame_count(n, fps) == math.floor(Fraction(n, SR) * ref)


@pytest.mark.parametrize(
    "fps,exact", [(25, Fraction(25)), (29.97, Fraction(2997, 100)), (30, Fraction(30)), (60, Fraction(60)),
                  (30000 / 1001, Fraction(30000, 1001))]
)
def test_start_steps_exact(fps, exact):
    for i in range(0, 30000, 7):
        expected = math.floor(Fraction(50 * i) / exact)
        assert frame_start_step(i, fps) == expected
        # the time rule floor(t * 50) agrees, for exact and float times
        assert time_start_step(Fraction(i) / exact) == expected
        assert time_start_step(i / fps) == expected
    assert frame_start_step(2997, 29.97) == 5000
    assert frame_start_step(600, 30000 / 1001) == 1001


def test_pad_unit():
    assert [musetalk_pad_unit(f) for f in (25, 29.97, 30, 50, 60, 12)] == [2, 2, 2, 1, 1, 5]


def test_features_at_time_equals_index_rule(encoder):
    pcm = _speechlike(8.0, 6)
    for flavour in ("musetalk", "latentsync"):
        ref = reference_features(pcm, 29.97, encoder, flavour)
        frames = list(range(len(ref)))
        _, exact = _stream(encoder, flavour, 29.97, pcm, frames, at_time=lambda i: Fraction(i * 100, 2997))
        _, floats = _stream(encoder, flavour, 29.97, pcm, frames, at_time=lambda i: i / 29.97)
        for i in frames:
            np.testing.assert_allclose(exact[i], ref[i], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(floats[i], exact[i])


# ----------------------------------------------------------------------------- edges


def _window_states(encoder, pcm, final_layer_norm):
    mel = torch.from_numpy(log_mel(pcm[:WINDOW_SAMPLES]))[None]
    return encoder.hidden_states(mel, final_layer_norm)[0].numpy()


def test_musetalk_edges_are_zero_padded(encoder):
    pcm = _speechlike(29.5, 7)
    total = len(pcm) // 320  # 1475 steps
    states = _window_states(encoder, pcm, True)
    frames = [0, 1, 735, 736]
    _, got = _stream(encoder, "musetalk", 25, pcm, frames)
    rows = {i: got[i].reshape(10, LAYERS, D) for i in frames}
    # frame 0 at 25 fps: steps -4..5; the four left rows are zeros, then steps 0..5, time-major
    assert np.all(rows[0][:4] == 0)
    np.testing.assert_allclose(rows[0][4:], states[0:6], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rows[1][2:], states[0:8], rtol=1e-6, atol=1e-6)
    # last frame (736): steps 1468..1477, steps from 1475 on are past the audio
    assert frame_count(len(pcm), 25) == 737
    np.testing.assert_allclose(rows[736][:7], states[1468:total], rtol=1e-6, atol=1e-6)
    assert np.all(rows[736][7:] == 0)
    # flatten order: token k is (time k // LAYERS, layer k % LAYERS)
    np.testing.assert_array_equal(got[736][3 * LAYERS + 1], states[1471, 1])


def test_latentsync_edges_are_clamped(encoder):
    pcm = _speechlike(29.5, 8)
    total = len(pcm) // 320
    ref = reference_features(pcm, 25, encoder, "latentsync")
    frames = [0, 1, 735, 736, 737, 740]  # 737+ lie past the audio: still clamped, as upstream
    _, got = _stream(encoder, "latentsync", 25, pcm, frames)
    rows = {i: got[i].reshape(10, LAYERS, D) for i in frames}
    for r in range(1, 5):  # steps -4..0 all read step 0
        np.testing.assert_array_equal(rows[0][r], rows[0][0])
    assert np.abs(rows[0][5] - rows[0][4]).max() > 1e-3
    for r in range(3):  # frame 1: steps -2..7 -> 0, 0, 0, 1, ..., 7
        np.testing.assert_array_equal(rows[1][r], rows[0][0])
    np.testing.assert_array_equal(rows[1][3:8], rows[0][5:])
    # frame 736: steps 1468..1477 -> the last three read step 1474
    ref_rows = ref[736].reshape(10, LAYERS, D)
    np.testing.assert_allclose(rows[736], ref_rows, rtol=1e-5, atol=1e-5)
    for r in (8, 9):
        np.testing.assert_array_equal(rows[736][r], rows[736][7])
    assert total - 1 == 1474
    for i in (737, 740):
        assert np.all(rows[i][-1] == rows[736][7])
    # pre-LayerNorm last state: differs from the MuseTalk (post-LayerNorm) stack
    mt = _window_states(encoder, pcm, True)
    assert np.abs(rows[736][0, -1] - mt[1468, -1]).max() > 1e-2


def test_stream_needs_audio_and_forward_order(encoder):
    pcm = _speechlike(3.0, 9)
    stream = AudioFeatureStream(encoder, "musetalk", 25)
    with pytest.raises(NeedMoreAudio) as need:
        stream.features(0)
    assert need.value.samples_needed == 320 * 6  # steps up to 5 must exist
    stream.push(pcm[:5000])
    with pytest.raises(NeedMoreAudio) as need:  # window 0 still incomplete
        stream.features(0)
    assert need.value.samples_needed == WINDOW_SAMPLES
    assert stream.frame_count is None and stream.step_count is None
    stream.push(pcm[5000:])
    stream.close()
    assert stream.frame_count == 75 and stream.step_count == 150
    a = stream.features(10)
    np.testing.assert_array_equal(stream.features(10), a)  # same frame again is fine
    with pytest.raises(ValueError, match="increasing order"):
        stream.features(9)
    assert stream.features(200).sum() == 0  # far past the audio: all zero padding
    with pytest.raises(RuntimeError):
        stream.push(pcm)
    with pytest.raises(ValueError):
        stream.features(-1)


def test_stream_rejects_bad_arguments(encoder):
    with pytest.raises(ValueError, match="model"):
        AudioFeatureStream(encoder, "wav2lip", 25)
    with pytest.raises(ValueError, match="mel_peak"):
        AudioFeatureStream(encoder, "musetalk", 25, mel_peak=1.0)
    stream = AudioFeatureStream(encoder, "musetalk", 25)
    with pytest.raises(ValueError, match="mono"):
        stream.push(np.zeros((2, 100), np.float32))
    tiny = AudioFeatureStream(encoder, "latentsync", 25)
    tiny.push(np.zeros(300, np.float32))
    tiny.close()
    with pytest.raises(ValueError, match="too short"):
        tiny.features(0)


def test_one_hour_stream_memory_is_flat(encoder):
    """An hour of audio in 0.1 s chunks: at most 2 windows and one window of samples held."""
    stream = AudioFeatureStream(WhisperAudioEncoder(encoder.config).eval(), "musetalk", 25)
    rng = np.random.default_rng(10)
    chunk = 1600
    total = 3600 * SR
    pos, max_buffer = 0, 0
    for i in range(0, frame_count(total, 25), 5):
        while True:
            try:
                feats = stream.features(i)
                break
            except NeedMoreAudio:
                stream.push((0.1 * rng.standard_normal(chunk)).astype(np.float32))
                pos += chunk
                if pos >= total:
                    stream.close()
        assert feats.shape == (10 * LAYERS, D)
        assert len(stream.held_windows) <= 2
        max_buffer = max(max_buffer, stream.buffered_samples)
    assert stream.windows_encoded == 120
    assert max_buffer <= WINDOW_SAMPLES + N_FFT + chunk


@pytest.mark.parametrize("flavour", ["musetalk", "latentsync"])
def test_a_stream_seldom_asked_stays_small_and_exact(encoder, flavour):
    """A lane asked only now and then (a dub whose face is off screen for a minute) is told how
    far the frames have moved: it holds about a window of samples, encodes nothing meanwhile,
    and the frames it is then asked for equal the reference."""
    pcm = _speechlike(91.0, 7)
    ref = reference_features(pcm, 25, encoder, flavour)
    peak = latentsync_mel_peak([pcm]) if flavour == "latentsync" else None
    stream = AudioFeatureStream(encoder, flavour, 25, mel_peak=peak)
    asked = set(range(0, 100)) | set(range(1900, len(ref)))        # off screen 4 s .. 76 s
    chunk, pos, most = 1600, 0, 0

    def push(upto):
        nonlocal pos
        while pos < min(upto, len(pcm)):
            stream.push(pcm[pos:pos + chunk])
            pos += chunk
        if pos >= len(pcm) and not stream.closed:
            stream.close()

    for i in range(len(ref)):
        push((i + 25) * SR // 25)              # the other lanes' frames pull the audio along
        if i in asked:
            while True:
                try:
                    got = stream.features_at_time(i / 25)
                    break
                except NeedMoreAudio as need:
                    push(need.samples_needed)
            np.testing.assert_allclose(got, ref[i], rtol=1e-5, atol=1e-5, err_msg=f"frame {i}")
        else:
            stream.skip_to_time(i / 25)
        most = max(most, stream.buffered_samples)
    assert most <= WINDOW_SAMPLES + N_FFT + 2 * SR
    assert stream.windows_encoded == 3          # 0-30, 60-90 and 90-91 s: never the 30-60 s one
