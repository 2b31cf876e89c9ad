"""Out of memory in a model stage: the batch is halved and retried, the results are those of
the whole batch, in order, and the profile counts every halving."""
import numpy as np
import pytest
import torch

from lipgraph.graph.items import Item
from lipgraph.graph.stage import StageContext
from lipgraph.stages import _torch
from lipgraph.stages._torch import is_oom, run_halving

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


class Ctx(StageContext):
    """Records what a stage counts and warns."""

    def __init__(self):
        self.counters, self.reasons, self.warnings = {}, {}, []

    def count(self, key, amount=1, reason=None):
        self.counters[key] = self.counters.get(key, 0) + amount
        if reason is not None:
            r = self.reasons.setdefault(key, {})
            r[reason] = r.get(reason, 0) + amount

    def warn(self, message):
        self.warnings.append(message)


class FakeStage:
    def __init__(self, name="encode"):
        self.name, self.ctx = name, Ctx()


class Limited:
    """fn(lo, hi) that runs out of memory on more than `limit` rows; records the calls."""

    def __init__(self, limit, error=torch.cuda.OutOfMemoryError, make=None):
        self.limit, self.error, self.calls = limit, error, []
        self.make = make or (lambda lo, hi: torch.arange(lo, hi) * 10)

    def __call__(self, lo, hi):
        self.calls.append(hi - lo)
        if hi - lo > self.limit:
            raise self.error(OOM)
        return self.make(lo, hi)


# ----- the helper ------------------------------------------------------------------------------
def test_halves_until_it_fits_and_keeps_order():
    stage, fn = FakeStage(), Limited(3)
    out = run_halving(stage, fn, 11, what="the VAE encoder")
    assert torch.equal(out, torch.arange(11) * 10)
    assert fn.calls == [11, 5, 2, 3, 6, 3, 3]
    assert stage.ctx.counters == {"oom_halvings": 3}
    assert stage.ctx.reasons["oom_halvings"] == {"the VAE encoder: batch of 11": 1,
                                                 "the VAE encoder: batch of 5": 1,
                                                 "the VAE encoder: batch of 6": 1}
    [warning] = stage.ctx.warnings
    assert "batch of 11" in warning and "at most 3" in warning and "--batch_size" in warning


def test_remembers_the_size_that_fit():
    stage, fn = FakeStage(), Limited(3)
    run_halving(stage, fn, 11)
    fn.calls.clear()
    out = run_halving(stage, fn, 11)                  # split up front: no out of memory again
    assert torch.equal(out, torch.arange(11) * 10)
    assert fn.calls == [3, 3, 3, 2]
    assert run_halving(stage, fn, 2).tolist() == [0, 10]       # small batches run whole
    assert stage.ctx.counters == {"oom_halvings": 3, "oom_split_batches": 1}
    assert len(stage.ctx.warnings) == 1                        # warned once
    # another model of the same stage learns on its own
    other = Limited(100)
    run_halving(stage, other, 11, what="another model")
    assert other.calls == [11]


def test_joins_arrays_lists_and_tuples():
    stage = FakeStage()
    arrays = run_halving(stage, Limited(2, make=lambda lo, hi: np.arange(lo, hi)), 7)
    assert arrays.tolist() == list(range(7))
    lists = run_halving(FakeStage(), Limited(2, make=lambda lo, hi: [str(i) for i in range(lo, hi)]), 5)
    assert lists == ["0", "1", "2", "3", "4"]
    pairs = run_halving(FakeStage(), Limited(1, make=lambda lo, hi: (torch.arange(lo, hi),
                                                                     -torch.arange(lo, hi))), 4)
    assert pairs[0].tolist() == [0, 1, 2, 3] and pairs[1].tolist() == [0, -1, -2, -3]


def test_a_single_item_out_of_memory_names_the_stage_and_the_item():
    stage, fn = FakeStage("decode"), Limited(0)
    with pytest.raises(torch.cuda.OutOfMemoryError) as info:
        run_halving(stage, fn, 4, what="the VAE decoder", indices=[40, 41, 42, 43])
    text = str(info.value)
    assert "stage 'decode'" in text and "the VAE decoder" in text and "item 40" in text
    assert "--batch_size" in text and "--dtype float16" in text and OOM in text
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    assert fn.calls == [4, 2, 1]
    assert stage.ctx.counters == {"oom_halvings": 2}


def test_other_errors_are_not_retried():
    stage, fn = FakeStage(), Limited(3, error=ValueError)
    with pytest.raises(ValueError):
        run_halving(stage, fn, 8)
    assert fn.calls == [8] and stage.ctx.counters == {}


@pytest.mark.parametrize("error,oom", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 1125899906842624 bytes"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (MemoryError(), False),
])
def test_what_counts_as_out_of_memory(error, oom):
    assert is_oom(error) is oom


def test_cpu_allocator_error_is_halved_too():
    stage = FakeStage()
    fn = Limited(2, error=lambda m: RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert run_halving(stage, fn, 4).tolist() == [0, 10, 20, 30]
    assert stage.ctx.counters == {"oom_halvings": 1}


def test_cuda_cache_is_emptied_before_each_retry(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    run_halving(FakeStage(), Limited(1), 4)
    assert len(emptied) == 3                    # 4 -> 2 + 2 -> 1 + 1 + 1 + 1


def test_grows_back_now_and_then(monkeypatch):
    monkeypatch.setattr(_torch, "GROW_AFTER", 2)
    stage, fn = FakeStage(), Limited(2)
    run_halving(stage, fn, 8)                             # learns 2
    for _ in range(2):
        run_halving(stage, fn, 8)
    fn.calls.clear()
    assert run_halving(stage, fn, 8).tolist() == list(range(0, 80, 10))
    assert fn.calls == [4, 2, 2, 4, 2, 2]                 # tried 4: still too much
    halvings = stage.ctx.counters["oom_halvings"]
    fn.limit = 100                                        # memory was freed elsewhere
    for _ in range(4):                                    # waits twice as long now
        fn.calls.clear()
        run_halving(stage, fn, 8)
        assert fn.calls == [2, 2, 2, 2]
    fn.calls.clear()
    run_halving(stage, fn, 8)
    assert fn.calls == [4, 4]
    for _ in range(8):
        run_halving(stage, fn, 8)
    fn.calls.clear()
    run_halving(stage, fn, 8)
    assert fn.calls == [8]                                # whole batches again
    assert stage.ctx.counters["oom_halvings"] == halvings


def test_latentsync_window_reason_for_any_out_of_memory():
    from lipgraph.stages.surgical_unet import _reason
    assert _reason(torch.cuda.OutOfMemoryError(OOM)) == "CUDA out of memory"
    assert _reason(RuntimeError("DefaultCPUAllocator: can't allocate memory")) == "out of memory"


# ----- the MuseTalk model stages in-process ------------------------------------------------------
class OOMAbove:
    """Wraps a model call: out of memory when its first argument has more than `limit` rows."""

    def __init__(self, fn, limit):
        self.fn, self.limit, self.sizes = fn, limit, []

    def __call__(self, x, *args, **kwargs):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(OOM)
        return self.fn(x, *args, **kwargs)


@pytest.fixture(scope="module")
def weights(tiny_models):
    return tiny_models


class FakeParser:
    """A face parser with a cheap, deterministic class map per image (BiSeNet at 512 px is
    seconds per frame on a CPU); the stage's bookkeeping around it is what is tested."""

    def parse(self, images):
        return [np.full((512, 512), int(img.mean()) % 19, np.uint8) for img in images]


def face_items(n, first=0):
    rng = np.random.default_rng(7)
    items = []
    for i in range(first, first + n):
        frame = rng.integers(0, 255, (120, 160, 3), np.uint8)
        items.append(Item(i, {"frame": frame, "face_box": np.array([40, 20, 120, 100], np.int32),
                              "crop": rng.integers(0, 255, (256, 256, 3), np.uint8),
                              "audio": rng.standard_normal((50, 32)).astype(np.float32)}))
    return items


def musetalk_stages(weights):
    from lipgraph.stages.face_parse import FaceParse
    from lipgraph.stages.surgical_unet import SurgicalUNet
    from lipgraph.stages.vae_decode import VAEDecode
    from lipgraph.stages.vae_encode import VAEEncode
    cpu = {"device": "cpu"}
    stages = [VAEEncode("encode", {"vae": weights["vae"], "model": "musetalk", "keep": "no", **cpu}, Ctx()),
              SurgicalUNet("unet", {"model": "musetalk", "unet": weights["unet"],
                                    "unet_config": weights["unet_config"], "vae": weights["vae"], **cpu}, Ctx()),
              VAEDecode("decode", {"vae": weights["vae"], **cpu}, Ctx()),
              FaceParse("parse", cpu, Ctx())]
    for s in stages:
        s.open()
    stages[-1].parser = FakeParser()
    stages[-1].ctx.warnings.clear()             # no parsing weights given
    return stages


def run_musetalk(stages, batches):
    """Each batch through encode -> unet -> decode -> parse; per frame: latents, pred, face, mask."""
    from lipgraph.stages.batch_builder import stack_batch
    out = {}
    for items in batches:
        batch = stack_batch(items)
        for stage in stages:
            [(_, batch)] = list(stage.process(batch, "in"))
            if stage.name == "encode":
                latents = batch.data["latents"].clone()
            if stage.name == "unet":
                pred = batch.data["pred"].clone()
        for k, it in enumerate(batch.items):
            out[it.index] = (latents[k], pred[k], it.data["face"], it.data["mask"])
    return out


def test_musetalk_stages_halve_on_out_of_memory(weights, monkeypatch):
    batches = [face_items(4), face_items(3, first=4)]
    clean = run_musetalk(musetalk_stages(weights), batches)

    stages = musetalk_stages(weights)
    encode, unet, decode, parse = stages
    vae = encode.vae                                   # shared by encode and decode
    faults = {
        # the encoder sees the masked and the reference half of each frame: 2 frames = 4 rows
        "encode": OOMAbove(vae.vae.encode, 4),
        "unet": OOMAbove(unet.model.unet.forward, 2),
        "decode": OOMAbove(vae.vae.decode, 2),
        "parse": OOMAbove(parse.parser.parse, 2),
    }
    monkeypatch.setattr(vae.vae, "encode", faults["encode"])
    monkeypatch.setattr(vae.vae, "decode", faults["decode"])
    monkeypatch.setattr(unet.model.unet, "forward", faults["unet"])
    parse.parser.parse = faults["parse"]
    got = run_musetalk(stages, [face_items(4), face_items(3, first=4)])

    assert sorted(got) == sorted(clean) == list(range(7))
    for i in range(7):
        (zl, pl, fl, ml), (zc, pc, fc, mc) = got[i], clean[i]
        torch.testing.assert_close(zl, zc, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pl, pc, rtol=1e-5, atol=1e-5)
        assert np.abs(fl.astype(int) - fc.astype(int)).max() <= 1
        np.testing.assert_allclose(ml, mc, atol=1e-5)
    for stage in stages:
        c = stage.ctx
        # the first batch halves once (4 -> 2 + 2); the second (3) is split up front (2 + 1)
        assert c.counters["oom_halvings"] == 1, (stage.name, c.counters)
        assert c.counters["oom_split_batches"] == 1, (stage.name, c.counters)
        assert len(c.warnings) == 1 and "at most 2" in c.warnings[0], stage.name
        last = faults[stage.name].sizes[-2:]            # the up-front pieces of the second batch
        assert last == ([4, 2] if stage.name == "encode" else [2, 1]), (stage.name, last)
    assert unet.ctx.counters["frames_musetalk"] == 7


def test_latentsync_window_is_encoded_in_pieces(weights, monkeypatch):
    """The VAE is per frame: a LatentSync window (context first) may be encoded in pieces."""
    from lipgraph.stages.batch_builder import stack_batch
    from lipgraph.stages.vae_encode import VAEEncode

    def window():
        rng = np.random.default_rng(3)
        items = [Item(i, {"aligned": rng.integers(0, 255, (256, 256, 3), np.uint8)}) for i in range(10, 14)]
        context = [{"aligned": rng.integers(0, 255, (256, 256, 3), np.uint8)} for _ in range(2)]
        return stack_batch(items, context)

    def encode(fault):
        stage = VAEEncode("encode", {"vae": weights["vae"], "model": "latentsync", "keep": "no",
                                     "device": "cpu"}, Ctx())
        stage.open()
        if fault:
            monkeypatch.setattr(stage.vae.vae, "encode", OOMAbove(stage.vae.vae.encode, 4))
        [(_, batch)] = list(stage.process(window(), "in"))
        return stage, batch.data

    _, clean = encode(False)
    stage, got = encode(True)
    for key in ("ls_masked", "ls_ref", "ls_mask"):
        torch.testing.assert_close(got[key], clean[key], rtol=1e-5, atol=1e-5)
    assert stage.ctx.counters["oom_halvings"] == 3        # 6 frames -> 3 + 3 -> 1 + 2, 1 + 2


# ----- face detection and landmarks --------------------------------------------------------------
def test_detection_and_landmarks_halve(monkeypatch):
    from lipgraph.stages.face_detect import FaceDetect
    from lipgraph.stages.face_landmarks import FaceLandmarks

    class Detector:
        name = "fake"

        def detect(self, frames):
            return [np.array([[10, 10, 50, 50, 0.9]], np.float32) + int(f[0, 0, 0]) for f in frames]

    class Landmarks:
        def landmarks(self, frames, boxes):
            return [np.full((68, 2), f[0, 0, 0], np.float32) for f in frames]

    def run(limit):
        detect = FaceDetect("detect", {"detector": "haar", "device": "cpu", "batch_size": 8}, Ctx())
        detect.open()
        detect.detector = Detector()
        detect.detector.detect = OOMAbove(detect.detector.detect, limit)
        marks = FaceLandmarks("landmarks", {"sets": "none", "batch_size": 8}, Ctx())
        marks.open()
        marks.fan, marks.on = Landmarks(), True
        marks.fan.landmarks = OOMAbove(marks.fan.landmarks, limit)
        out = []
        for i in range(12):
            for _, it in detect.process(Item(i, {"frame": np.full((64, 64, 3), i, np.uint8)}), "in"):
                out += [m for _, m in marks.process(it, "in")]
        for _, it in detect.finish():
            out += [m for _, m in marks.process(it, "in")]
        out += [m for _, m in marks.finish()]
        return detect, marks, out

    _, _, clean = run(100)
    detect, marks, got = run(2)
    assert [m.index for m in got] == list(range(12))
    for a, b in zip(got, clean):
        np.testing.assert_array_equal(a.data["box"], b.data["box"])
        np.testing.assert_array_equal(a.data["lm68"], b.data["lm68"])
    for stage in (detect, marks):
        assert stage.ctx.counters["oom_halvings"] == 3, stage.ctx.counters   # 8 -> 4 + 4 -> 2 x 4
        assert stage.ctx.counters["oom_split_batches"] >= 1


# ----- the whole graph --------------------------------------------------------------------------
class OOMMuseTalk:
    """MuseTalk's backend whose UNet runs out of memory on more than 2 frames (a graph run
    names it with `--set unet.model=tests.test_oom_halving:OOMMuseTalk`)."""
    name = "musetalk"

    def __init__(self, stage):
        from lipgraph.stages.unets.musetalk import MuseTalkUNet
        self.inner = MuseTalkUNet(stage)
        self.inner.unet = OOMAbove(self.inner.unet, 2)

    @staticmethod
    def required_weights(params):
        from lipgraph.stages.unets.musetalk import MuseTalkUNet
        return MuseTalkUNet.required_weights(params)

    def run(self, batch):
        self.inner.run(batch)


@pytest.mark.slow               # a whole graph run in a subprocess (~10 s, more on a busy machine)
def test_graph_run_halves_and_profiles_it(tmp_path, weights):
    import json
    import os
    import subprocess

    from lipgraph.graph.profile import format_table
    from lipgraph.media.video import VideoReader
    from lipgraph.tools.synthetic import graph_command, make_clip, model_sets
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    video, audio = make_clip(str(tmp_path), "F" * 12 + "CC" + "F" * 5)
    out = str(tmp_path / "o.mkv")
    cmd = graph_command(os.path.join(root, "configs", "graphs", "musetalk.yaml"), video, audio, out,
                        model_sets(weights) + ["mux.codec=ffv1", "mux.pix_fmt=bgr0",
                                               "unet.model=tests.test_oom_halving:OOMMuseTalk"],
                        "--no-trace", "--runner", "inline")
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "out of memory in the MuseTalk UNet on a batch of 8" in proc.stderr
    assert len(list(VideoReader(out))) == 19
    profile = json.load(open(out + ".profile.json"))
    unet = profile["stages"]["unet"]
    # batch of 8: 8 -> 4 + 4 -> 2 x 4 (3 halvings); then 4 + 5 frames split up front
    assert unet["counters"]["oom_halvings"] == 3
    assert unet["counters"]["oom_split_batches"] == 2
    assert unet["counters"]["frames_musetalk"] == 17
    assert unet["reasons"]["oom_halvings"] == {"the MuseTalk UNet: batch of 8": 1,
                                               "the MuseTalk UNet: batch of 4": 2}
    assert "unet: oom_halvings: the MuseTalk UNet: batch of 8 x1" in format_table(profile)
