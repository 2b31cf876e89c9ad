"""The LatentSync UNet stage: windows, sampling, fallbacks, and the surgical graph end to end
with tiny random models."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from lipgraph.graph.items import Batch, Flush, Item
from lipgraph.graph.spec import load_graph
from lipgraph.models.latentsync_sampler import LatentSyncSampler, guided, make_scheduler
from lipgraph.stages.batch_builder import WindowRouter
from lipgraph.models.random_weights import tiny_latentsync
from lipgraph.tools.synthetic import graph_command, make_clip, model_sets, read_id, tiny_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SURGICAL = os.path.join(ROOT, "configs", "graphs", "surgical.yaml")
LOSSLESS = ["mux.codec=ffv1", "mux.pix_fmt=bgr0"]


# ----- windows ------------------------------------------------------------------------------
def face(i):
    return Item(i, {"box": np.zeros(5), "aligned": np.full((4, 4, 3), i, np.uint8),
                    "audio_ls": np.full((2, 3), i, np.float32), "crop": np.zeros((2, 2, 3), np.uint8),
                    "audio": np.zeros((2, 3), np.float32)})


def windows(pattern, size=16):
    """'F' face, 'C' cutaway, '|' an index gap; returns the emitted messages."""
    r = WindowRouter(size)
    out, i = [], 0
    for c in pattern:
        if c == "|":
            i += 5
            continue
        out += list(r.add(face(i)) if c == "F" else r.divert(Item(i, {"box": None})))
        i += 1
    out += list(r.flush())
    return [m for _, m in out]


def test_long_shot_tail_overlaps_previous_window():
    out = windows("F" * 40)
    assert [(m.index, len(m), m.data["n_context"]) for m in out] == [(0, 16, 0), (16, 16, 0), (32, 8, 8)]
    tail = out[2]
    # context = frames 24..31 (their model inputs), then the 8 new frames 32..39
    assert [int(a[0, 0, 0]) for a in tail.data["aligned"]] == list(range(24, 40))
    assert tail.data["audio_ls"].shape == (16, 2, 3)
    assert tail.data["crops"].shape[0] == 8 and tail.data["audio"].shape[0] == 8   # new only


def test_windows_never_span_cutaways_or_gaps():
    out = windows("F" * 20 + "CC" + "F" * 5 + "|" + "F" * 3)
    wins = [m for m in out if isinstance(m, Batch)]
    assert [(m.index, len(m), m.data["n_context"]) for m in wins] == [
        (0, 16, 0), (16, 4, 12), (22, 5, 0), (32, 3, 0)]
    ctx = [int(a[0, 0, 0]) for a in wins[1].data["aligned"]]
    assert ctx == list(range(4, 20))                       # same shot only
    assert sum(isinstance(m, Flush) for m in out) == 1      # gap marker before the cutaways
    items = [m for m in out if isinstance(m, Item)]
    assert [m.index for m in items] == [20, 21]


def test_short_shot_runs_with_fewer_frames():
    out = windows("FFFFFC")
    assert [(m.index, len(m), m.data["n_context"]) for m in out if isinstance(m, Batch)] == [(0, 5, 0)]


def test_preroll_frames_bypass_so_windows_start_at_the_boundary():
    """A resumed or split run decodes a few frames before its first output frame (tracking
    and smoothing warm up on them); they bypass the models, so no window spans the
    boundary with the previous part."""
    from lipgraph.stages.batch_builder import BatchBuilder
    b = BatchBuilder("batch", {"model": "latentsync", "window": 16, "batch_size": 8})
    b.open()
    out = []
    for i in range(12, 60):                      # the part starts at 20, pre-roll from 12
        item = face(i)
        if i < 20:
            item.data["preroll"] = True
        out += list(b.process(item, "in"))
    out += list(b.finish())
    wins = [m for p, m in out if isinstance(m, Batch)]
    assert [(m.index, m.last_index, m.data["n_context"]) for m in wins] == [
        (20, 35, 0), (36, 51, 0), (52, 59, 8)]
    assert [m.index for p, m in out if p == "bypass" and isinstance(m, Item)] == list(range(12, 20))
    assert min(int(a[0, 0, 0]) for m in wins for a in m.data["aligned"]) == 20   # no context before it


def test_window_limit_enforced_by_graph(tmp_path):
    from lipgraph.graph.spec import GraphError
    with pytest.raises(GraphError, match="1..24"):
        load_graph(SURGICAL, ["batch.window=25", "video.path=a", "video.audio=b", "audio.path=b",
                              "mux.path=c.mp4"])


# ----- sampling ---------------------------------------------------------------------------------
class CountingUNet(torch.nn.Module):
    """Stands in for the UNet3D: eps = a fixed function of its input, counting calls."""
    def __init__(self, zero=False):
        super().__init__()
        self.calls = []
        self.zero = zero
        self.w = torch.nn.Parameter(torch.zeros(1))

    @property
    def dtype(self):
        return torch.float32

    def forward(self, x, t, audio):
        self.calls.append(("full", x.shape[0]))
        if self.zero:
            return torch.zeros_like(x[:, :4])
        per_sample = audio.flatten(1).mean(1).view(-1, 1, 1, 1, 1)     # batch members independent
        return 0.1 * x[:, :4] + 0.01 * x[:, 4:8] + 0.001 * per_sample

    def forward_full(self, x, t, audio):
        return self.forward(x, t, audio), "cache"

    def forward_shallow(self, x, t, audio, cache):
        self.calls.append(("shallow", x.shape[0]))
        return 0.1 * x[:, :4]


def window_inputs(frames=6, h=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(4, h, h, generator=g), torch.ones(frames, 1, h, h),
            torch.randn(frames, 4, h, h, generator=g), torch.randn(frames, 4, h, h, generator=g),
            torch.randn(frames, 5, 3, generator=g))


def test_scheduler_is_latentsync_ddim():
    s = make_scheduler()
    s.set_timesteps(20)
    assert s.timesteps.tolist() == list(range(951, 0, -50))
    assert s.config.beta_schedule == "scaled_linear" and s.config.steps_offset == 1
    assert not s.config.clip_sample and not s.config.set_alpha_to_one


def test_guidance_arithmetic_and_g1_is_the_conditional_branch():
    u, c = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(guided(torch.cat([u, c]), 1.0), c)
    torch.testing.assert_close(guided(torch.cat([u, c]), 1.5), u + 1.5 * (c - u))
    unet = CountingUNet()
    inputs = window_inputs()
    single = LatentSyncSampler(unet, steps=5, guidance=1.0).sample(*inputs)
    assert unet.calls == [("full", 1)] * 5                   # one branch: half the work

    class Doubled(LatentSyncSampler):                        # both branches, g = 1
        cfg = True
    unet.calls.clear()
    both = Doubled(unet, steps=5, guidance=1.0).sample(*inputs)
    assert unet.calls == [("full", 2)] * 5
    torch.testing.assert_close(single, both)


def test_noise_is_shared_by_every_frame():
    unet = CountingUNet(zero=True)          # eps = 0: each frame's result depends on noise only
    out = LatentSyncSampler(unet, steps=4, guidance=1.5).sample(*window_inputs(frames=5))
    for f in range(1, 5):
        torch.testing.assert_close(out[f], out[0])


def test_deepcache_schedule_and_interval_one_is_exact():
    unet = CountingUNet()
    inputs = window_inputs()
    ref = LatentSyncSampler(unet, steps=20, guidance=1.5).sample(*inputs)
    unet.calls.clear()
    same = LatentSyncSampler(unet, steps=20, guidance=1.5, cache_interval=1).sample(*inputs)
    torch.testing.assert_close(ref, same)
    unet.calls.clear()
    s = LatentSyncSampler(unet, steps=20, guidance=1.5, cache_interval=3)
    s.sample(*inputs)
    kinds = [k for k, _ in unet.calls]
    assert kinds.count("full") == 7 and kinds.count("shallow") == 13 and s.unet_calls() == (7, 13)


def test_deepcache_on_a_real_unet3d_is_close_but_not_equal(tmp_path):
    from lipgraph.models.latentsync_unet3d import load_latentsync_unet
    paths = tiny_latentsync(str(tmp_path))
    unet = load_latentsync_unet(paths["unet3d"], paths["unet3d_config"])
    noise, mask, masked, ref, _ = window_inputs(frames=4, h=16)
    audio = torch.randn(4, 20, 32, generator=torch.Generator().manual_seed(3))
    full = LatentSyncSampler(unet, steps=6, guidance=1.5).sample(noise, mask, masked, ref, audio)
    cached = LatentSyncSampler(unet, steps=6, guidance=1.5, cache_interval=3).sample(
        noise, mask, masked, ref, audio)
    assert torch.isfinite(cached).all() and not torch.equal(full, cached)
    # close: the reused deep features change the result a little (another noise: ~1.3)
    assert ((full - cached).norm() / full.norm()).item() < 0.15


# ----- the surgical graph ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("models"))
    return tiny_weights(root), tiny_latentsync(root)


def run_graph(video, audio, output, sets, expect=0):
    cmd = graph_command(SURGICAL, video, audio, output, sets, "--quiet")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def read_run(video, out, side):
    from lipgraph.media.video import VideoReader
    src = [f.image for f in VideoReader(video)]
    frames = [f.image for f in VideoReader(out)]
    rows = [json.loads(line) for line in open(side)]
    assert len(rows) == len(frames)
    for row, frame in zip(rows, frames):
        assert read_id(frame) == row["src"]
        changed = (frame != src[row["src"]]).any(-1)
        if row["edit"] is None:
            assert not changed.any(), row                     # cutaway: untouched
        else:
            x1, y1, x2, y2 = row["edit"]
            changed[y1:y2, x1:x2] = False
            assert not changed.any(), row                     # nothing outside the edit box
    return rows, json.load(open(out + ".profile.json"))


def test_latentsync_end_to_end(tmp_path, models):
    mt, ls = models
    video, audio = make_clip(str(tmp_path), "F" * 20 + "CCC" + "F" * 5)
    out, side = str(tmp_path / "o.mkv"), str(tmp_path / "o.jsonl")
    run_graph(video, audio, out, model_sets(mt, latentsync=ls) + LOSSLESS + [f"mux.sidecar={side}"])
    rows, prof = read_run(video, out, side)
    assert [r["model"] for r in rows] == ["latentsync"] * 20 + [None] * 3 + ["latentsync"] * 5
    unet = prof["stages"]["unet"]
    assert unet["batch_sizes"] == {"4": 1, "5": 1, "16": 1}      # 16, the tail (+12 context), 5
    assert "fallback_windows" not in unet["counters"]


class FlakyLatentSync:
    """The LatentSync backend, failing on windows that start at index 16 (like a CUDA OOM)."""
    name = "latentsync"

    def __init__(self, stage):
        from lipgraph.stages.unets.latentsync import LatentSyncUNet
        self.inner = LatentSyncUNet(stage)

    required_weights = staticmethod(lambda params: [])

    def run(self, batch):
        if batch.index == 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.inner.run(batch)


def test_window_failure_falls_back_to_musetalk(tmp_path, models):
    mt, ls = models
    video, audio = make_clip(str(tmp_path), "F" * 24)
    out, side = str(tmp_path / "o.mkv"), str(tmp_path / "o.jsonl")
    sets = model_sets(mt, latentsync=ls) + LOSSLESS + [
        f"mux.sidecar={side}", "unet.model=tests.test_latentsync_pipeline:FlakyLatentSync"]
    run_graph(video, audio, out, sets)
    rows, prof = read_run(video, out, side)
    assert [r["model"] for r in rows] == ["latentsync"] * 16 + ["musetalk"] * 8
    unet = prof["stages"]["unet"]
    assert unet["counters"] == {"fallback_windows": 1, "fallback_frames": 8,
                                "frames_latentsync": 16, "frames_musetalk": 8}
    assert unet["reasons"]["fallback_windows"] == {"CUDA out of memory": 1}


class DivergingLatentSync:
    """The real LatentSync backend whose sampler diverges (NaN) on the window at index 0:
    the backend's own finiteness check must catch it."""
    name = "latentsync"
    required_weights = staticmethod(lambda params: [])

    def __init__(self, stage):
        from lipgraph.stages.unets.latentsync import LatentSyncUNet
        self.inner = LatentSyncUNet(stage)
        sample = self.inner.sampler.sample

        def diverging(noise, *args):
            out = sample(noise, *args)
            return out * float("nan") if self.index == 0 else out
        self.inner.sampler.sample = diverging

    def run(self, batch):
        self.index = batch.index
        self.inner.run(batch)


def test_non_finite_window_falls_back_and_the_table_says_why(tmp_path, models):
    from lipgraph.graph.profile import format_table
    mt, ls = models
    video, audio = make_clip(str(tmp_path), "F" * 24)
    out, side = str(tmp_path / "o.mkv"), str(tmp_path / "o.jsonl")
    run_graph(video, audio, out, model_sets(mt, latentsync=ls) + LOSSLESS + [
        f"mux.sidecar={side}", "unet.model=tests.test_latentsync_pipeline:DivergingLatentSync"])
    rows, prof = read_run(video, out, side)
    assert [r["model"] for r in rows] == ["musetalk"] * 16 + ["latentsync"] * 8
    unet = prof["stages"]["unet"]
    assert unet["reasons"]["fallback_windows"] == {"non-finite output": 1}
    assert "unet: fallback_windows: non-finite output x1" in format_table(prof)


def test_noise_is_seeded_and_shared_by_every_window():
    """One noise map for the whole run: the same for every window (and every frame of it),
    the same on every run with the same seed, another with another seed."""
    import types
    from lipgraph.stages.unets.latentsync import LatentSyncUNet

    def backend(seed):
        return types.SimpleNamespace(noise=None, seed=seed, device="cpu")
    a, b, c = backend(1247), backend(1247), backend(7)
    shape = (4, 8, 8)
    first = LatentSyncUNet._noise(a, shape)
    assert LatentSyncUNet._noise(a, shape) is first                 # the next window
    assert torch.equal(LatentSyncUNet._noise(b, shape), first)      # another run
    assert not torch.equal(LatentSyncUNet._noise(c, shape), first)


def test_fallback_none_stops_with_the_reason(tmp_path, models):
    mt, ls = models
    video, audio = make_clip(str(tmp_path), "F" * 20)
    out = str(tmp_path / "o.mkv")
    sets = model_sets(mt, latentsync=ls) + [
        "unet.fallback=none", "unet.model=tests.test_latentsync_pipeline:FlakyLatentSync"]
    proc = run_graph(video, audio, out, sets, expect=1)
    assert "stage 'unet'" in proc.stderr and "items 16..19" in proc.stderr
    assert "OutOfMemoryError" in proc.stderr and not os.path.exists(out)


def test_unloadable_latentsync_runs_musetalk_with_one_warning(tmp_path, models):
    mt, ls = models
    bad = tmp_path / "latentsync_unet.pt"
    bad.write_bytes(b"not a checkpoint")
    video, audio = make_clip(str(tmp_path), "F" * 10 + "CC" + "F" * 6)
    out, side = str(tmp_path / "o.mkv"), str(tmp_path / "o.jsonl")
    sets = model_sets(mt, latentsync=dict(ls, unet3d=str(bad))) + LOSSLESS + [f"mux.sidecar={side}"]
    proc = run_graph(video, audio, out, sets)
    assert proc.stderr.count("failed to load") == 1 and "the whole run uses MuseTalk" in proc.stderr
    rows, prof = read_run(video, out, side)
    assert {r["model"] for r in rows if r["face"]} == {"musetalk"}
    reasons = prof["stages"]["unet"]["reasons"]["fallback_frames"]
    assert sum(reasons.values()) == 16 and list(reasons) == ["latentsync failed to load"]


def test_missing_latentsync_weights_switch_the_graph_to_musetalk(tmp_path):
    g = load_graph(SURGICAL, ["video.path=a", "video.audio=b", "audio.path=b", "mux.path=c.mp4",
                              f"unet.weights={tmp_path}"])
    assert g.stages["unet"].params["model"] == "musetalk"
    assert g.stages["batch"].params["model"] == "musetalk"
    assert g.stages["align"].params["enabled"] == "no"
    assert g.stages["whisper"].params["model"] == "musetalk"
    assert len(g.notes) == 1 and "latentsync15_unet" in g.notes[0] and "uses MuseTalk" in g.notes[0]


def test_binding_follows_model_and_version(tmp_path, models):
    _, ls = models
    g = load_graph(SURGICAL, ["video.path=a", "video.audio=b", "audio.path=b", "mux.path=c.mp4",
                              f"unet.unet3d={ls['unet3d']}", "unet.version=1.6"])
    p = {name: s.params for name, s in g.stages.items()}
    assert p["unet"]["model"] == "latentsync" and not g.notes
    assert p["align"]["enabled"] == "yes" and p["align"]["resolution"] == 512
    assert p["batch"]["model"] == "latentsync" and p["encode"]["model"] == "latentsync"
    assert p["whisper"]["model"] == "latentsync,musetalk" and p["audio"]["peak"] == "yes"
    assert p["crop"]["enabled"] == "yes"          # the MuseTalk fallback needs its crops
    # 1.6: InsightFace's 106 points for the alignment, 68 for the fallback's crop box; the
    # detector fed BGR as face_alignment feeds it
    assert p["landmarks"]["alignment"] == "insightface" and p["landmarks"]["sets"] == "106,68"
    assert p["detect"]["channel_order"] == "bgr"
    g = load_graph(SURGICAL, ["video.path=a", "video.audio=b", "audio.path=b", "mux.path=c.mp4",
                              f"unet.unet3d={ls['unet3d']}", "unet.version=1.5"])
    assert g.stages["landmarks"].params["alignment"] == "fan"
    assert g.stages["landmarks"].params["sets"] == "68"
    g = load_graph(SURGICAL, ["video.path=a", "video.audio=b", "audio.path=b", "mux.path=c.mp4",
                              f"unet.unet3d={ls['unet3d']}", "unet.fallback=none"])
    assert g.stages["crop"].params["enabled"] == "no"
    assert g.stages["whisper"].params["model"] == "latentsync"
