"""The first run without any download: the sample tool's clip through both graphs with
--random-weights, which builds random models once (in the real formats, loaded by the
real loaders) and says loudly that the output is not lip-synced."""
import json
import os
import subprocess
import sys

import av
import pytest

from lipgraph.media.probe import probe_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from lipgraph.tools.sample import main
    folder = str(tmp_path_factory.mktemp("sample"))
    assert main([folder, "--seconds", "1.6", "--size", "320x240", "--extra", "0.4"]) == 0
    return folder


def run(args, cache, **kw):
    env = dict(os.environ, LIPGRAPH_CACHE=cache)
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_graph.py"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.parametrize("graph,extra", [("musetalk.yaml", []),
                                         ("surgical.yaml", ["--steps", "2", "--window", "8"])])
def test_sample_runs_with_random_weights(sample, tmp_path_factory, graph, extra):
    cache = str(tmp_path_factory.getbasetemp() / "cache")
    out = os.path.join(sample, f"out-{graph}.mp4")
    proc = run([os.path.join("configs", "graphs", graph), "--video", os.path.join(sample, "sample.mp4"),
                "--audio", os.path.join(sample, "dub.wav"), "--output", out, "--random-weights",
                "--quiet", *extra], cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("NOT lip-synced") == 2          # before and after the run
    info = probe_video(out)
    assert info.frame_count == 50                             # 2.0 s of dub at 25 fps
    with av.open(out) as c:
        assert "not lip-synced" in c.metadata.get("comment", "")
    prof = json.load(open(out + ".profile.json"))
    assert prof["random_weights"] == "tiny"
    unet = prof["stages"]["unet"]
    assert unet["items_in"] > 0
    model = "latentsync" if graph == "surgical.yaml" else "musetalk"
    assert unet["counters"][f"frames_{model}"] == unet["items_in"]      # the chosen model ran
    assert not unet["counters"].get("fallback_windows") and not unet["reasons"]
    built = os.listdir(os.path.join(cache, "random-weights", "tiny"))
    assert "models" in built and (graph == "musetalk.yaml" or "latentsync-1.5" in built)


def test_random_weights_and_weights_exclude_each_other(sample, tmp_path):
    proc = run([os.path.join("configs", "graphs", "musetalk.yaml"), "--video",
                os.path.join(sample, "sample.mp4"), "--audio", os.path.join(sample, "dub.wav"),
                "--output", str(tmp_path / "o.mp4"), "--random-weights", "--weights", str(tmp_path)],
               str(tmp_path / "cache"))
    assert proc.returncode == 2 and "exclude each other" in proc.stderr


def test_interrupted_build_is_not_reused(tmp_path):
    """A build that dies half way leaves no folder that looks finished."""
    from lipgraph.models import random_weights

    def boom(folder):
        open(os.path.join(folder, "half"), "w").close()
        raise KeyboardInterrupt

    target = str(tmp_path / "models")
    with pytest.raises(KeyboardInterrupt):
        random_weights._ensure(target, boom)
    assert not os.path.exists(target) and os.listdir(tmp_path) == []
    random_weights._ensure(target, lambda d: open(os.path.join(d, "ok"), "w").close())
    assert sorted(os.listdir(target)) == [".complete", "ok"]
