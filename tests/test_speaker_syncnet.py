"""`face: speaker` scored by SyncNet's audio-visual confidence (vision/speaker_syncnet.py): the
speaker chosen through face_detect is the track whose confidence, computed independently with
models/lse.py on the same crops and audio, is highest; `syncnet: auto` without the weights
falls back to mouth motion with a warning; a bad `syncnet` path is an error naming the file."""
import numpy as np
import pytest
import torch

from lipgraph.graph.stage import StageContext
from lipgraph.models.lse import SAMPLES_PER_FRAME, WINDOW, crop_face, sync_score, syncnet_mfcc
from lipgraph.stages.face_detect import FaceDetect

FRAMES, FPS = 30, 25.0
NAMES = ("left", "right")


class Ctx(StageContext):
    def __init__(self):
        self.warnings = []

    def count(self, key, amount=1, reason=None):
        pass

    def warn(self, text):
        self.warnings.append(text)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Two people, the left one's mouth opening with the speech; frames, true boxes, the wav
    and a randomly initialised full-size SyncNet saved as syncnet_v2.model."""
    from lipgraph.models.syncnet import SyncNet
    from lipgraph.tools.synthetic import speech_like, write_wav
    from lipgraph.tools.synthetic_faces import people_frame, two_people
    folder = tmp_path_factory.mktemp("syncnet_speaker")
    pcm = speech_like(FRAMES / FPS)
    rms = np.array([np.sqrt(np.mean(pcm[i * 640:(i + 1) * 640] ** 2)) for i in range(FRAMES)])
    mouths = {"left": rms / rms.max(), "right": np.full(FRAMES, 0.1)}
    shots = [people_frame(i, two_people(away=()), 640, 360, mouths) for i in range(FRAMES)]
    wav = str(folder / "speech.wav")
    write_wav(wav, pcm)
    torch.manual_seed(0)
    model = SyncNet().eval()
    weights = str(folder / "syncnet_v2.model")
    torch.save(model.state_dict(), weights)
    return shots, wav, weights, model


def _stage(params, ctx):
    stage = FaceDetect("detect", {"detector": "haar", "face": "speaker", "device": "cpu",
                                  "batch_size": 1, **params}, ctx)
    stage.info = {"fps": FPS}
    stage.open()
    return stage


def _oracle(model, shots, pcm, end, vshift):
    """SyncNet's confidence per person over the ticks end-25 .. end-1, from models/lse.py."""
    k0, n = end - 25, 25
    mfcc = syncnet_mfcc(pcm[k0 * SAMPLES_PER_FRAME:(k0 + n) * SAMPLES_PER_FRAME])
    mfcc = np.stack([mfcc[:, 4 * j:4 * j + 20] for j in range(n - WINDOW)])[:, None]
    out = {}
    with torch.inference_mode():
        audio = model.embed_audio(torch.from_numpy(mfcc).float())
        for name in NAMES:
            crops = []
            for frame, truth in shots[k0:end]:
                x0, y0, x1, y1 = truth[name]
                crops.append(crop_face(frame, (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2))
            lips = np.stack([np.stack(crops[j:j + WINDOW]) for j in range(n - WINDOW)])
            lips = torch.from_numpy(lips[..., ::-1].transpose(0, 4, 1, 2, 3).copy()).float()   # BGR
            out[name] = sync_score(model.embed_lips(lips), audio, vshift).confidence
    return out


def test_syncnet_picks_the_track_with_the_highest_confidence(clip):
    from lipgraph.graph.items import Item
    from lipgraph.media.audio import read_audio
    from lipgraph.vision.speaker_syncnet import SyncNetConfidence
    shots, wav, weights, model = clip
    ctx = Ctx()
    stage = _stage({"syncnet": weights, "speech": wav}, ctx)
    assert not ctx.warnings, ctx.warnings
    # the detector reports the true boxes: what is checked is the choice, not detection
    truth_of = {id(frame): truth for frame, truth in shots}
    stage.detector.detect = lambda frames: [
        np.array([[*truth_of[id(f)][n], 0.99] for n in NAMES], np.float32) for f in frames]
    chosen, scores = [], {}
    for i, (frame, _) in enumerate(shots):
        out = list(stage.process(Item(i, {"frame": frame}, i / FPS), "in"))
        chosen += [it.data.get("face_id") for _, it in out]
        scorer = stage.choice.speaker.scorer
        assert isinstance(scorer, SyncNetConfidence)
        scorer.floor = 0.0           # a random SyncNet's confidences are small
        if i in (24, 29):           # the scorer evaluates every 5 ticks, from a full second
            scores[i + 1] = dict(scorer.scores)
    chosen += [it.data.get("face_id") for _, it in stage.finish()]
    ids = {}                         # track id -> person, by the box it follows
    for tid, box in stage.choice.tracker.update(FRAMES, [[*shots[-1][1][n], 0.99] for n in NAMES]):
        ids[tid] = next(n for n in NAMES if np.allclose(box[:4], shots[-1][1][n]))
    pcm = read_audio(wav, 16000)
    for end, got in scores.items():
        expected = _oracle(model, shots, pcm, end, scorer.vshift)
        assert set(got) == set(ids)
        for tid, conf in got.items():
            assert conf == pytest.approx(expected[ids[tid]], rel=1e-4, abs=1e-6), (end, got, expected)
    first = _oracle(model, shots, pcm, 25, scorer.vshift)
    best = max(first, key=first.get)
    print(f"random SyncNet confidences at 1 s: {first}")
    assert first[best] > min(first.values()) * 1.01                  # not a tie
    assert chosen[:24] == [None] * 24                                 # no score before a full second
    assert [ids[t] for t in chosen[24:]] == [best] * (FRAMES - 24), (chosen, first)


def test_auto_without_weights_uses_mouth_motion_with_a_warning(clip, tmp_path):
    from lipgraph.graph.items import Item
    from lipgraph.vision.speaker import MouthMotion
    shots, wav, _, _ = clip
    for setting, warned in (("auto", True), ("off", False)):
        ctx = Ctx()
        stage = _stage({"syncnet": setting, "weights": str(tmp_path), "speech": wav}, ctx)
        list(stage.process(Item(0, {"frame": shots[0][0]}, 0.0), "in"))
        assert isinstance(stage.choice.speaker.scorer, MouthMotion)
        notes = [w for w in ctx.warnings if "SyncNet" in w]
        assert len(notes) == warned and (not warned or "mouth motion" in notes[0]), ctx.warnings


def test_a_bad_syncnet_path_is_an_error_naming_it(clip, tmp_path):
    _, wav, _, _ = clip
    missing = str(tmp_path / "nowhere" / "syncnet_v2.model")
    problems = FaceDetect.validate_params({**FaceDetect.params, "face": "speaker", "syncnet": missing})
    assert [p for p in problems if p[0] == "syncnet" and missing in p[1]], problems
    damaged = tmp_path / "syncnet_v2.model"
    torch.save({"netcnnaud.0.weight": torch.zeros(1)}, str(damaged))
    with pytest.raises(Exception, match="syncnet_v2.model") as err:
        _stage({"syncnet": str(damaged), "speech": wav}, Ctx())
    assert str(damaged) in str(err.value)
