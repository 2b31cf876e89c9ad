"""Stage logic in isolation: detection scheduling, the audio join, batching at cutaways."""
import numpy as np
import pytest
import torch

from lipgraph.graph.items import Batch, Info, Item
from lipgraph.graph.stage import StageContext
from lipgraph.stages.batch_builder import BatchBuilder
from lipgraph.stages.face_detect import FaceDetect
from lipgraph.stages.whisper_features import WhisperFeatures


class FakeDetector:
    """Faces where the test says, one box per frame; records which frames it was asked."""
    name = "fake"

    def __init__(self, faces: dict):
        self.faces = faces          # frame value -> box or None
        self.asked = []

    def detect(self, frames):
        out = []
        for f in frames:
            k = int(f[0, 0, 0])
            self.asked.append(k)
            box = self.faces.get(k)
            out.append(np.zeros((0, 5), np.float32) if box is None else np.array([box], np.float32))
        return out


def run_detect(faces, n, every, batch=8):
    stage = FaceDetect("detect", {"detect_every": every, "batch_size": batch, "detector": "haar",
                                  "device": "cpu"}, StageContext())
    stage.open()
    stage.detector = FakeDetector(faces)
    out = []
    for i in range(n):
        out += [m for _, m in stage.process(Item(i, {"frame": np.full((4, 4, 3), i, np.uint8)}), "in")]
    out += [m for _, m in stage.finish()]
    return out, stage.detector.asked


def test_detect_every_frame_in_batches():
    faces = {i: [10, 10, 50, 50, 0.9] for i in range(20)}
    out, asked = run_detect(faces, 20, every=1, batch=8)
    assert [m.index for m in out] == list(range(20))
    assert sorted(asked) == list(range(20))
    assert all(m.data["box"] is not None for m in out)


def test_detect_every_n_interpolates_a_steady_face():
    # the face moves right by 1 px per frame: interpolation between keyframes is exact
    faces = {i: [10 + i, 10, 50 + i, 50, 0.9] for i in range(21)}
    out, asked = run_detect(faces, 21, every=5)
    assert sorted(set(asked)) == [0, 5, 10, 15, 20]
    assert [m.index for m in out] == list(range(21))
    for m in out:
        np.testing.assert_allclose(m.data["box"][:4], faces[m.index][:4], atol=1e-4)


def test_detect_every_n_redetects_where_a_face_appears_or_jumps():
    faces = {i: [10, 10, 50, 50, 0.9] for i in range(0, 7)}          # face 0..6
    faces.update({i: [200, 10, 240, 50, 0.9] for i in range(13, 21)})  # another place 13..20
    out, asked = run_detect(faces, 21, every=5)
    got = {m.index: m.data["box"] for m in out}
    for i in range(21):
        if i in faces:
            np.testing.assert_allclose(got[i][:4], faces[i][:4])
        else:
            assert got[i] is None, i
    # keyframes 0,5,10,15,20 plus every frame of the two changing gaps (6..9, 11..14)
    assert set(asked) == {0, 5, 10, 15, 20} | set(range(6, 10)) | set(range(11, 15))


def test_detect_keeps_the_tracked_face_among_several():
    class Two(FakeDetector):
        def detect(self, frames):
            return [np.array([[0, 0, 100, 100, 0.9], [300, 0, 330, 30, 0.9]], np.float32)
                    if int(f[0, 0, 0]) < 3 else
                    np.array([[290, 0, 330, 30, 0.9], [0, 0, 100, 100, 0.9], [5, 0, 105, 100, 0.95]], np.float32)
                    for f in frames]
    stage = FaceDetect("d", {"detector": "haar", "device": "cpu", "batch_size": 1}, StageContext())
    stage.open()
    stage.detector = Two({})
    boxes = []
    for i in range(6):
        boxes += [m.data["box"] for _, m in stage.process(Item(i, {"frame": np.full((4, 4, 3), i, np.uint8)}), "in")]
    assert np.allclose(boxes[0][:4], [0, 0, 100, 100])            # largest first
    assert all(b[0] < 10 for b in boxes)                           # then the same track


# ----- the audio join -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder():
    from transformers import WhisperConfig

    from lipgraph.models.whisper import WhisperAudioEncoder
    torch.manual_seed(0)
    cfg = WhisperConfig(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                        num_mel_bins=80, max_source_positions=1500)
    enc = WhisperAudioEncoder(cfg).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return enc


def make_whisper_stage(encoder, flavour="musetalk"):
    """The stage with an in-memory encoder instead of a file (as open() would set it up)."""
    stage = WhisperFeatures("whisper", {"device": "cpu", "whisper": "x", "model": flavour},
                            StageContext())
    stage.encoder, stage.streams, stage.mel_peaks = encoder, None, {}
    stage.models = flavour.split(",")
    stage.pending, stage.audio_ended, stage.frames_ended = None, False, False
    return stage


@pytest.mark.parametrize("fps", [25.0, 29.97, 30.0, 60.0])
def test_whisper_stage_matches_reference_across_windows(encoder, fps):
    """Frames skipping cutaways, audio in 1 s chunks, 31 s of audio (two encoder windows):
    each face frame gets exactly the reference layout's tokens."""
    from tests.audio_oracle import reference_features
    rng = np.random.default_rng(1)
    pcm = (0.1 * rng.standard_normal(int(31.0 * 16000))).astype(np.float32)
    ref = reference_features(pcm, fps, encoder, "musetalk")
    stage = make_whisper_stage(encoder)
    list(stage.on_info(Info(fps=fps, start_index=0), "frames"))
    chunks = [pcm[k:k + 16000] for k in range(0, len(pcm), 16000)]
    out = {}
    n = len(ref)
    frames = [Item(i, {"box": None if (i // 40) % 3 == 1 else np.zeros(5)}, time_s=i / fps)
              for i in range(n)]
    fi = 0
    while fi < n or stage.pending is not None:
        if stage.accepts() == ("audio",):
            if chunks:
                emits = stage.process(Item(0, {"pcm": chunks.pop(0)}), "audio")
            else:
                emits = stage.on_eos("audio")
        else:
            emits = stage.process(frames[fi], "frames")
            fi += 1
        for _, m in emits:
            out[m.index] = m.data.get("audio")
    assert len(out) == n
    held = stage.streams[None]["musetalk"].held_windows
    assert len(held) <= 2
    for i in range(n):
        if frames[i].data["box"] is None:
            assert out[i] is None
        else:
            np.testing.assert_allclose(out[i], ref[i], rtol=0, atol=1e-5)


def test_whisper_stage_gives_each_model_its_features(encoder):
    """Both flavours from one stage: MuseTalk's in `audio`, LatentSync's (with the clip's mel
    peak from the audio source's Info) in `audio_ls`, each equal to its reference."""
    from lipgraph.media.audio_features import latentsync_mel_peak
    from tests.audio_oracle import reference_features
    rng = np.random.default_rng(2)
    pcm = (0.1 * rng.standard_normal(3 * 16000)).astype(np.float32)
    stage = make_whisper_stage(encoder, "latentsync,musetalk")
    list(stage.on_info(Info(fps=25.0), "frames"))
    list(stage.on_info(Info(mel_peak=latentsync_mel_peak([pcm])), "audio"))
    list(stage.process(Item(0, {"pcm": pcm}), "audio"))
    list(stage.on_eos("audio"))
    got = [m for i in range(75)
           for _, m in stage.process(Item(i, {"box": np.zeros(5)}, time_s=i / 25.0), "frames")]
    for flavour, key in (("musetalk", "audio"), ("latentsync", "audio_ls")):
        ref = reference_features(pcm, 25.0, encoder, flavour)
        np.testing.assert_allclose(np.stack([m.data[key] for m in got]), ref[:75], atol=1e-5)


def test_whisper_stage_drains_audio_after_last_frame(encoder):
    stage = make_whisper_stage(encoder)
    list(stage.on_info(Info(fps=25.0), "frames"))
    stage.on_eos("frames")
    assert stage.accepts() == ("audio",)
    assert list(stage.process(Item(0, {"pcm": np.zeros(16000, np.float32)}), "audio")) == []
    assert stage.streams is None or all(s.buffered_samples == 0 for lane in stage.streams.values()
                                         for s in lane.values())


# ----- batching at cutaways -----------------------------------------------------------------
def test_batch_builder_releases_before_cutaway_and_marks_gap():
    b = BatchBuilder("batch", {"batch_size": 4})
    b.open()
    out = []
    pattern = "FFFFFFCCFF"
    for i, c in enumerate(pattern):
        data = {"crop": np.zeros((2, 2, 3), np.uint8), "box": np.zeros(5) if c == "F" else None,
                "audio": np.zeros((3, 2), np.float32)}
        out += list(b.process(Item(i, data), "in"))
    out += list(b.finish())
    kinds = [(p, type(m).__name__, getattr(m, "index", None), len(m) if isinstance(m, Batch) else None)
             for p, m in out]
    assert kinds == [("main", "Batch", 0, 4), ("main", "Batch", 4, 2), ("main", "Flush", None, None),
                     ("bypass", "Item", 6, None), ("bypass", "Item", 7, None), ("main", "Batch", 8, 2)]
    first = out[0][1]
    assert first.data["crops"].shape == (4, 2, 2, 3) and first.data["audio"].shape == (4, 3, 2)


def test_detect_every_auto_detects_at_shot_changes_and_misses_no_face():
    # shot A (grey 60, a face) 0..19, a cutaway shot (grey 200, no face) 20..29, shot A again
    # 30..45: keyframes every 8 frames plus both sides of each cut
    faces = {i: [10, 10, 50, 50, 0.9] for i in list(range(20)) + list(range(30, 46))}
    stage = FaceDetect("detect", {"detect_every": "auto", "batch_size": 8, "detector": "haar",
                                  "device": "cpu"}, StageContext())
    stage.open()
    stage.detector = FakeDetector(faces)
    out = []
    for i in range(46):
        frame = np.full((64, 64, 3), 200 if 20 <= i < 30 else 60, np.uint8)
        frame[0, 0, 0] = i
        out += [m for _, m in stage.process(Item(i, {"frame": frame}), "in")]
    out += [m for _, m in stage.finish()]
    assert [m.index for m in out] == list(range(46))
    assert sorted(set(stage.detector.asked)) == [0, 8, 16, 19, 20, 24, 29, 30, 32, 40, 45]
    for m in out:                      # every face found, no box on the cutaway shot
        assert (m.data["box"] is not None) == (m.index in faces), m.index
