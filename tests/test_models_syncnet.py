"""SyncNet (syncnet_v2) for LSE-C / LSE-D: architecture and strict loading against the key list
of the upstream module, the MFCC front end, the face crop, tracks, and the offset search (the
scoring math is tested with planted embeddings, apart from the network)."""
import math

import numpy as np
import pytest
import torch

from lipgraph.models.lse import (
    _mel_filterbank,
    _median_filter,
    crop_face,
    face_tracks,
    lse_tracks,
    resample_to_25fps,
    smooth_track,
    sync_distances,
    sync_score,
    syncnet_mfcc,
)
from lipgraph.models.syncnet import SyncNet, load_syncnet
from lipgraph.models.checkpoint import StateDictMismatchError
from tests.spec_keys import check_rejects_bad_files

# state_dict() of joonson/syncnet_python SyncNetModel.S(num_layers_in_fc_layers=1024), in order:
# name and shape ("" = scalar). 102 entries: 88 tensors of weights and statistics (13,631,616
# parameters) and 14 BatchNorm num_batches_tracked counters.
SYNCNET_V2_KEYS = """
netcnnaud.0.weight 64x1x3x3
netcnnaud.0.bias 64
netcnnaud.1.weight 64
netcnnaud.1.bias 64
netcnnaud.1.running_mean 64
netcnnaud.1.running_var 64
netcnnaud.1.num_batches_tracked
netcnnaud.4.weight 192x64x3x3
netcnnaud.4.bias 192
netcnnaud.5.weight 192
netcnnaud.5.bias 192
netcnnaud.5.running_mean 192
netcnnaud.5.running_var 192
netcnnaud.5.num_batches_tracked
netcnnaud.8.weight 384x192x3x3
netcnnaud.8.bias 384
netcnnaud.9.weight 384
netcnnaud.9.bias 384
netcnnaud.9.running_mean 384
netcnnaud.9.running_var 384
netcnnaud.9.num_batches_tracked
netcnnaud.11.weight 256x384x3x3
netcnnaud.11.bias 256
netcnnaud.12.weight 256
netcnnaud.12.bias 256
netcnnaud.12.running_mean 256
netcnnaud.12.running_var 256
netcnnaud.12.num_batches_tracked
netcnnaud.14.weight 256x256x3x3
netcnnaud.14.bias 256
netcnnaud.15.weight 256
netcnnaud.15.bias 256
netcnnaud.15.running_mean 256
netcnnaud.15.running_var 256
netcnnaud.15.num_batches_tracked
netcnnaud.18.weight 512x256x5x4
netcnnaud.18.bias 512
netcnnaud.19.weight 512
netcnnaud.19.bias 512
netcnnaud.19.running_mean 512
netcnnaud.19.running_var 512
netcnnaud.19.num_batches_tracked
netfcaud.0.weight 512x512
netfcaud.0.bias 512
netfcaud.1.weight 512
netfcaud.1.bias 512
netfcaud.1.running_mean 512
netfcaud.1.running_var 512
netfcaud.1.num_batches_tracked
netfcaud.3.weight 1024x512
netfcaud.3.bias 1024
netfclip.0.weight 512x512
netfclip.0.bias 512
netfclip.1.weight 512
netfclip.1.bias 512
netfclip.1.running_mean 512
netfclip.1.running_var 512
netfclip.1.num_batches_tracked
netfclip.3.weight 1024x512
netfclip.3.bias 1024
netcnnlip.0.weight 96x3x5x7x7
netcnnlip.0.bias 96
netcnnlip.1.weight 96
netcnnlip.1.bias 96
netcnnlip.1.running_mean 96
netcnnlip.1.running_var 96
netcnnlip.1.num_batches_tracked
netcnnlip.4.weight 256x96x1x5x5
netcnnlip.4.bias 256
netcnnlip.5.weight 256
netcnnlip.5.bias 256
netcnnlip.5.running_mean 256
netcnnlip.5.running_var 256
netcnnlip.5.num_batches_tracked
netcnnlip.8.weight 256x256x1x3x3
netcnnlip.8.bias 256
netcnnlip.9.weight 256
netcnnlip.9.bias 256
netcnnlip.9.running_mean 256
netcnnlip.9.running_var 256
netcnnlip.9.num_batches_tracked
netcnnlip.11.weight 256x256x1x3x3
netcnnlip.11.bias 256
netcnnlip.12.weight 256
netcnnlip.12.bias 256
netcnnlip.12.running_mean 256
netcnnlip.12.running_var 256
netcnnlip.12.num_batches_tracked
netcnnlip.14.weight 256x256x1x3x3
netcnnlip.14.bias 256
netcnnlip.15.weight 256
netcnnlip.15.bias 256
netcnnlip.15.running_mean 256
netcnnlip.15.running_var 256
netcnnlip.15.num_batches_tracked
netcnnlip.18.weight 512x256x1x6x6
netcnnlip.18.bias 512
netcnnlip.19.weight 512
netcnnlip.19.bias 512
netcnnlip.19.running_mean 512
netcnnlip.19.running_var 512
netcnnlip.19.num_batches_tracked
"""


def spec_keys():
    out = []
    for line in SYNCNET_V2_KEYS.strip().splitlines():
        name, _, shape = line.partition(" ")
        out.append((name, tuple(int(d) for d in shape.split("x")) if shape else ()))
    return out


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = SyncNet()
    with torch.no_grad():   # give BatchNorm statistics values, so loading them is visible
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def weights_file(net, tmp_path_factory):
    # as the published file: no num_batches_tracked counters
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return str(path)


# ----------------------------------------------------------------------------- model


def test_state_dict_matches_upstream_key_list(net):
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == spec_keys()
    assert sum(p.numel() for p in net.parameters()) == 13_631_616


def test_embedding_shapes(net):
    with torch.no_grad():
        lips = net.embed_lips(torch.rand(2, 3, 5, 224, 224) * 255)
        audio = net.embed_audio(torch.randn(3, 1, 13, 20))
    assert lips.shape == (2, 1024) and audio.shape == (3, 1024)
    assert torch.isfinite(lips).all() and torch.isfinite(audio).all()
    assert SyncNet.from_config({"embedding_dim": 64}).netfclip[3].out_features == 64
    with pytest.raises(ValueError, match="unknown SyncNet config"):
        SyncNet.from_config({"layers": 3})


def test_strict_load_reproduces_the_saved_model(net, weights_file):
    model = load_syncnet(weights_file)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x, a = torch.rand(2, 3, 5, 224, 224) * 255, torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        assert torch.equal(model.embed_lips(x), net.embed_lips(x))
        assert torch.equal(model.embed_audio(a), net.embed_audio(a))
    full = weights_file + ".full"
    torch.save(net.state_dict(), full)          # with the counters is fine too
    load_syncnet(full)


@pytest.mark.parametrize("damage, words", [
    (lambda sd: sd.pop("netfclip.3.bias"), ["missing", "netfclip.3.bias"]),
    (lambda sd: sd.__setitem__("netcnnlip.20.weight", torch.zeros(3)), ["unexpected", "netcnnlip.20.weight"]),
    (lambda sd: sd.__setitem__("netfcaud.3.weight", torch.zeros(512, 512)), ["shape", "netfcaud.3.weight"]),
    (lambda sd: sd.__setitem__("netcnnaud.1.running_var", torch.ones(65)),
     ["shape", "netcnnaud.1.running_var"]),
])
def test_strict_load_rejects_bad_files(net, tmp_path, damage, words):
    sd = dict(net.state_dict())
    damage(sd)
    path = tmp_path / "bad.model"
    torch.save(sd, path)
    with pytest.raises(StateDictMismatchError) as err:
        load_syncnet(path)
    msg = str(err.value)
    assert str(path) in msg
    for w in words:
        assert w in msg


def test_load_rejects_non_state_dicts_and_missing_files(tmp_path):
    check_rejects_bad_files(load_syncnet, ValueError, tmp_path, torch.zeros(3), "tensor.model", "state dict")


# ----------------------------------------------------------------------------- MFCC


def test_mfcc_shape_and_frame_count():
    assert syncnet_mfcc(np.zeros(100, np.float32)).shape == (13, 1)
    assert syncnet_mfcc(np.zeros(400, np.float32)).shape == (13, 1)
    assert syncnet_mfcc(np.zeros(401, np.float32)).shape == (13, 2)
    # 640 samples per 25 fps frame: 4m - 1 steps for m frames, enough for 4 (m - 5) + 20
    for m in (6, 10, 37):
        assert syncnet_mfcc(np.zeros(640 * m, np.float32)).shape == (13, 4 * m - 1)


def test_mfcc_silence_and_gain():
    silent = syncnet_mfcc(np.zeros(3200, np.float32))
    assert np.allclose(silent[0], math.log(np.finfo(float).eps))
    assert np.allclose(silent[1:], 0, atol=1e-4)     # DCT of a constant: only c0
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(8000) * 3000).astype(np.int16)
    a, b = syncnet_mfcc(pcm), syncnet_mfcc((pcm * 2).astype(np.int16))
    # a gain shifts every log band energy alike: only c0 (the log energy) moves, by log 4
    assert np.allclose(b[0] - a[0], math.log(4), atol=1e-4)
    assert np.allclose(b[1:], a[1:], atol=1e-3)
    # float input is read as 16-bit PCM, as the reference reads its WAV
    assert np.allclose(syncnet_mfcc(pcm.astype(np.float32) / 32768), a, atol=1e-4)


def test_mfcc_tone_lands_in_its_mel_band():
    fb = _mel_filterbank(26, 512, 16000)
    assert fb.shape == (26, 257) and np.allclose(fb.max(1), 1.0)
    centres = fb.argmax(1)
    assert (np.diff(centres) > 0).all()
    for hz in (300.0, 1000.0, 3000.0):
        t = np.arange(16000) / 16000
        tone = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        x = np.fft.rfft(tone[:400], 512)
        band = int(np.argmax(np.abs(x) ** 2 @ fb.T))
        assert abs(centres[band] * 16000 / 512 - hz) < 16000 / 512 * 6, (hz, band)


def test_mfcc_matches_python_speech_features_when_installed():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(16000 + 123) * 0.1).astype(np.float32)
    pcm = np.clip(np.rint(audio.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
    ref = psf.mfcc(pcm, 16000).T
    assert np.abs(syncnet_mfcc(audio) - ref).max() < 1e-4


# ----------------------------------------------------------------------------- crops, tracks


def test_median_filter_pads_with_zeros_like_medfilt():
    assert _median_filter(np.array([3.0, 1, 2, 5]), 3).tolist() == [1, 2, 2, 2]
    boxes = np.array([[100, 50, 160, 130]] * 20, float)
    cx, cy, half = smooth_track(boxes)[10]
    assert (cx, cy, half) == (130, 90, 40)         # half of the larger side


def test_crop_geometry_and_padding():
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[118:123, 158:163] = 255                   # a dot at the crop centre (160, 120)
    crop = crop_face(frame, 160, 120, 50)
    assert crop.shape == (224, 224, 3)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    # 1.4 half-sides either side, 1 above and 1.8 below: centre at x 112, y 224 / 2.8 = 80
    assert abs(xs.mean() - 111.5) < 2 and abs(ys.mean() - 79.5) < 2
    edge = crop_face(frame, 5, 5, 50)               # mostly outside the frame: gray 110
    assert edge[0, 0].tolist() == [110, 110, 110] and edge[-1, -1].tolist() == [0, 0, 0]


def test_face_tracks_split_at_gaps_and_cuts():
    box = [100, 100, 220, 220]
    far = [10, 10, 130, 130]
    boxes = [box] * 12 + [None] * 3 + [box] * 8 + [far] * 12 + [[0, 0, 50, 50]] * 12
    tracks = face_tracks(boxes, min_track=10, min_face_size=100)
    assert [(t.start, len(t.boxes)) for t in tracks] == [(0, 12), (23, 12)]  # 8 too short, 50 px too small
    assert len(face_tracks(boxes, min_track=5, min_face_size=0)) == 4


def test_resample_to_25fps():
    assert resample_to_25fps(10, 25.0) == list(range(10))
    assert resample_to_25fps(10, 50.0) == [0, 2, 4, 6, 8]
    assert resample_to_25fps(6, 30.0) == [0, 1, 2, 3, 4]
    assert resample_to_25fps(4, 12.5) == [0, 0, 1, 1, 2, 2, 3, 3]


# ----------------------------------------------------------------------------- scoring


def test_offset_search_finds_a_planted_shift():
    rng = np.random.default_rng(2)
    n, d, lag = 60, 32, 4
    video = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32))
    audio = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32))
    audio[lag:] = video[:-lag]                  # the sound comes `lag` windows after the lips
    score = sync_score(video, audio, vshift=15)
    assert score.offset == -lag
    assert score.min_dist == pytest.approx(float(score.mean_dists[15 + lag]))
    assert score.confidence == pytest.approx(float(np.median(score.mean_dists) - score.mean_dists.min()))
    assert score.confidence > 1.0
    aligned = sync_score(video, video.clone(), vshift=15)
    assert aligned.offset == 0 and aligned.min_dist < 1e-3


def test_distances_follow_the_reference_definition():
    rng = np.random.default_rng(3)
    v, a = (torch.from_numpy(rng.standard_normal((7, 5)).astype(np.float32)) for _ in range(2))
    got = sync_distances(v, a, vshift=3)
    for i in range(7):
        for j in range(7):
            k = i + j - 3
            other = a[k] if 0 <= k < 7 else torch.zeros(5)      # zero-padded audio
            assert got[i, j] == pytest.approx(float(torch.norm(v[i] - other + 1e-6)), rel=1e-5)


class _Planted:
    """A stand-in network: lips embed as bright/dark per frame, audio as loud/quiet per frame."""

    def embed_lips(self, x):                    # [B, 3, 5, 224, 224]
        return (x.mean(dim=(1, 3, 4)) > 110).float()

    def embed_audio(self, x):                   # [B, 1, 13, 20]: row 0 is the log energy
        return (x[:, 0, 0].reshape(-1, 5, 4).mean(-1) > 21).float()   # loud ~24, quiet ~13


def _planted_clip(n, delay, seed=4):
    """Frames bright/dark and audio loud/quiet from one random sequence; the audio follows the
    lips `delay` frames later (negative: earlier)."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, n + 40)
    frames = [np.full((240, 320, 3), 200 if bits[20 + i] else 40, np.uint8) for i in range(n)]
    audio = np.concatenate([rng.standard_normal(640) * (0.3 if bits[20 + i - delay] else 1e-3)
                            for i in range(n)])
    return frames, audio.astype(np.float32)


@pytest.mark.parametrize("delay", [0, 3, -2])
def test_lse_pipeline_recovers_a_planted_offset(delay):
    n = 40
    frames, audio = _planted_clip(n, delay)
    boxes = [[100, 60, 220, 180]] * n
    tracks = lse_tracks(iter(frames), boxes, audio, 25.0, model=_Planted(), min_track=10, min_face_size=100)
    assert len(tracks) == 1 and tracks[0]["windows"] == n - 5
    assert tracks[0]["offset"] == -delay       # > 0 would mean the lips trail the sound
    assert tracks[0]["lse_c"] > 1.0


def test_lse_tracks_skip_cutaways_and_average():
    frames, audio = _planted_clip(50, 0, seed=5)
    boxes = [[100, 60, 220, 180]] * 20 + [None] * 10 + [[100, 60, 220, 180]] * 20
    tracks = lse_tracks(iter(frames), boxes, audio, 25.0, model=_Planted(), min_track=10, min_face_size=0)
    assert [(t["start_frame"], t["frames"], t["windows"]) for t in tracks] == [(0, 20, 15), (30, 20, 15)]
    assert all(t["offset"] == 0 for t in tracks)
    assert lse_tracks(iter(frames), boxes, audio, 25.0, model=_Planted()) == []   # none of 100 frames


def test_lse_with_random_weights_is_finite(weights_file):
    model = load_syncnet(weights_file)
    rng = np.random.default_rng(6)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(12)]
    boxes = [[40, 20, 120, 100]] * 12
    audio = (rng.standard_normal(12 * 640) * 0.1).astype(np.float32)
    (track,) = lse_tracks(iter(frames), boxes, audio, 25.0, model=model, min_track=5, min_face_size=0)
    c, d = track["lse_c"], track["lse_d"]
    assert math.isfinite(c) and math.isfinite(d) and d > 0 and c >= 0
