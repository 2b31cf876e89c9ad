"""The same graph files on Ray (a local instance): same output as the process runner,
traces handed back from other nodes, split jobs equal to one pipeline, job batches isolated.
(The failures every runner shares are in tests/test_runner_failures.py.)"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from lipgraph.graph.spec import load_graph  # noqa: E402
from lipgraph.media.video import VideoReader  # noqa: E402
from lipgraph.runners import RunOptions  # noqa: E402
from lipgraph.runners.ray_runner import RayRunner, init_ray  # noqa: E402
from tests.engine_util import bypass_graph, rows, run, write_graph  # noqa: E402
from tests.engine_util import ray_actors_alive as alive  # noqa: E402
from lipgraph.tools.synthetic import graph_command, make_clip, model_sets, read_id, tiny_weights  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH = os.path.join(ROOT, "configs", "graphs", "musetalk.yaml")


@pytest.fixture(scope="module")
def local_ray():
    init_ray()
    yield ray
    ray.shutdown()


def test_same_output_as_process_runner(local_ray, tmp_path):
    out_r, out_p = str(tmp_path / "r.jsonl"), str(tmp_path / "p.jsonl")
    runner = RayRunner(load_graph(write_graph(tmp_path, bypass_graph(out_r, 120, "runs:7:5", workers=2), "r.yaml")),
                       RunOptions(progress=False, table=False))
    res = runner.run()
    assert res.ok, res.error
    assert run(write_graph(tmp_path, bypass_graph(out_p, 120, "runs:7:5", workers=2), "p.yaml"), "process").ok
    assert rows(out_r) == rows(out_p)
    assert res.profile["runner"] == "ray" and res.profile["stages"]["sink"]["items_in"] == 120
    assert len(runner.handles) == 5 and not alive(runner.handles)   # io, gpu, post x2, the hub


class FarRayRunner(RayRunner):
    """Every actor believes it runs on another node than the driver (a cluster in one box)."""
    driver_node = "a-node-elsewhere"


@pytest.mark.parametrize("fail", [False, True])
def test_actors_on_other_nodes_hand_back_traces_and_clean_up(local_ray, tmp_path, fail):
    """On another node the run's scratch folder exists only there: actors make it, return
    their trace for the driver's merged trace, remove a failed run's temporary files and
    their folder."""
    out = str(tmp_path / "o.jsonl")
    doc = bypass_graph(out, 60, "runs:7:5", workers=2)
    if fail:
        doc["stages"]["sink"]["params"]["fail_at"] = 50
    trace = str(tmp_path / "t.json")
    runner = FarRayRunner(load_graph(write_graph(tmp_path, doc)),
                          RunOptions(progress=False, table=False, trace_path=trace))
    res = runner.run()
    assert res.ok is not fail
    spans = [e for e in json.load(open(trace))["traceEvents"] if e["ph"] == "X"]
    # every group's spans (a failed run's are cut where it stopped)
    assert {e["name"] for e in spans} >= ({"src", "model"} if fail else {"src", "route", "model", "unb"})
    assert len({e["pid"] for e in spans}) >= (2 if fail else 4)
    assert not os.path.exists(runner.run_dir)
    assert not [f for f in os.listdir(tmp_path) if ".partial" in f]
    assert os.path.exists(out) is not fail


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    weights = tiny_weights(str(folder / "models"))
    pattern = "F" * 20 + "C" * 8 + "F" * 22
    video, audio = make_clip(str(folder), pattern)
    return folder, video, audio, pattern, model_sets(weights) + ["mux.codec=ffv1", "mux.pix_fmt=bgr0"]


def test_part_ranges_cut_on_nearby_keyframes():
    from lipgraph.runners.scaleout import part_ranges
    assert part_ranges(100, 4) == [(0, 25), (25, 50), (50, 75), (75, 100)]
    # keyframes within a quarter part (6.25 frames) of a cut move it; the nearest wins
    assert part_ranges(100, 4, [0, 20, 28, 48, 53, 90]) == [(0, 28), (28, 48), (48, 75), (75, 100)]
    assert part_ranges(3, 8) == [(0, 1), (1, 2), (2, 3)]


# the Ray twin (30 s) runs with the slow tests; the failing-part test covers Ray splits in CI
@pytest.mark.parametrize("runner", [pytest.param("ray", marks=pytest.mark.slow), "process"])
def test_split_job_equals_one_pipeline(local_ray, clip, runner):
    folder, video, audio, pattern, sets = clip
    one, split = str(folder / "one.mkv"), str(folder / f"split-{runner}.mkv")
    side1, side2 = str(folder / "one.jsonl"), str(folder / f"split-{runner}.jsonl")
    for out, side, extra in ((one, side1, []), (split, side2, ["--runner", runner, "--parallel", "2"])):
        proc = subprocess.run(graph_command(GRAPH, video, audio, out, sets + [f"mux.sidecar={side}"],
                                            "--quiet", "--no-trace", *extra),
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    from lipgraph.media.frame_source import keyframe_indices
    from lipgraph.runners.scaleout import part_ranges
    (a0, b0), (a1, b1) = part_ranges(len(pattern), 2, keyframe_indices(video))
    assert f"2 parts ({a0}..{b0 - 1}, {a1}..{b1 - 1})" in proc.stderr
    assert a1 in keyframe_indices(video)                  # cut on a keyframe (here: a scene cut)
    a, b = list(VideoReader(one)), list(VideoReader(split))
    assert len(a) == len(b) == len(pattern)
    assert [f.time for f in a] == [f.time for f in b]
    src = [f.image for f in VideoReader(video)]
    for fa, fb in zip(a, b):
        i = read_id(fa.image)
        assert read_id(fb.image) == i
        if pattern[i] == "C":
            assert np.array_equal(fb.image, src[i]) and np.array_equal(fa.image, fb.image)
    assert [json.loads(x)["src"] for x in open(side2)] == list(range(len(pattern)))
    assert not os.path.exists(os.path.join(folder, f".split-{runner}.mkv.lipgraph"))
    # the whole audio track, encoded once: the same as the single pipeline's
    from lipgraph.media.audio import read_audio
    pcm1, pcm2 = read_audio(one), read_audio(split)
    assert abs(len(pcm1) - len(pcm2)) <= 16000 // 25 and abs(len(pcm2) / 16000 - len(pattern) / 25) <= 1 / 25
    n = min(len(pcm1), len(pcm2))
    assert np.abs(pcm1[:n] - pcm2[:n]).max() < 1e-3


@pytest.mark.slow      # 19 s
def test_split_latentsync_windows_stay_inside_their_part(local_ray, clip):
    """A LatentSync graph split in two: the second part's pre-roll frames never reach the
    UNet (no window spans the cut), and every face frame is made by LatentSync once."""
    from lipgraph.models.random_weights import tiny_latentsync
    folder, _, _, _, sets = clip
    pattern = "F" * 40
    video, audio = make_clip(str(folder), pattern, name="shot")
    ls = tiny_latentsync(str(folder / "ls"))
    out = str(folder / "ls-split.mkv")
    surgical = os.path.join(ROOT, "configs", "graphs", "surgical.yaml")
    ls_sets = [s for s in sets] + [f"unet.unet3d={ls['unet3d']}", f"unet.unet3d_config={ls['unet3d_config']}",
                                   "unet.steps=1", "unet.model=latentsync", "batch.window=8"]
    proc = subprocess.run(graph_command(surgical, video, audio, out, ls_sets, "--quiet", "--no-trace",
                                        "--runner", "process", "--parallel", "2"),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 parts (0..19, 20..39)" in proc.stderr
    parts = [json.load(open(f"{out}.profile.json.part-{k}.json"))["stages"]["unet"] for k in (0, 1)]
    assert [p["items_in"] for p in parts] == [20, 20]          # not 28: the pre-roll bypassed
    assert sum(p["counters"].get("frames_latentsync", 0) for p in parts) == 40
    assert [read_id(f.image) for f in VideoReader(out)] == list(range(40))


@pytest.mark.slow       # 45 s: four jobs on Ray, one failing
def test_job_batch_failure_is_isolated(local_ray, clip, tmp_path):
    folder, video, audio, pattern, sets = clip
    short, _ = make_clip(str(tmp_path), "FFFFFFCCFF", name="short")
    jobs = {"defaults": {"graph": GRAPH, "audio": audio, "set": sets},
            "jobs": [{"video": short, "output": str(tmp_path / "a.mkv")},
                     {"video": short, "output": str(tmp_path / "b.mkv"), "set": ["mux.codec=nope"]},
                     {"video": short, "output": str(tmp_path / "c.mkv")}]}
    path = tmp_path / "jobs.yaml"
    import yaml
    path.write_text(yaml.safe_dump(jobs))
    proc = subprocess.run([sys.executable, "run_graph.py", "--jobs", str(path), "--runner", "ray",
                           "--retries", "1", "--concurrency", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.load(open(tmp_path / "jobs.report.json"))
    assert [r["status"] for r in report] == ["ok", "failed", "ok"]
    assert report[1]["attempts"] == 2 and "stage 'mux'" in report[1]["error"]
    assert os.path.exists(tmp_path / "a.mkv") and os.path.exists(tmp_path / "c.mkv")
    assert not os.path.exists(tmp_path / "b.mkv")
    assert "2/3 jobs ok" in proc.stderr


def test_job_that_fails_once_is_retried_and_succeeds(local_ray, tmp_path):
    import yaml
    graph = {"name": "flaky", "args": {"output": "sink.path", "flag": "work.fail_once"},
             "stages": {"src": {"type": "synthetic_source", "group": "a", "params": {"count": 20}},
                        "work": {"type": "synthetic_map", "group": "b"},
                        "sink": {"type": "synthetic_sink", "group": "a"}},
             "edges": ["src.out -> work.in", "work.out -> sink.in"]}
    gpath = write_graph(tmp_path, graph)
    jobs = {"defaults": {"graph": gpath},
            "jobs": [{"output": str(tmp_path / "steady.jsonl")},
                     {"output": str(tmp_path / "flaky.jsonl"), "flag": str(tmp_path / "tried")}]}
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(jobs))
    proc = subprocess.run([sys.executable, "run_graph.py", "--jobs", str(path), "--runner", "ray",
                           "--retries", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(tmp_path / "jobs.report.json"))
    assert [(r["status"], r["attempts"]) for r in report] == [("ok", 1), ("ok", 2)]
    assert "first attempt only" in proc.stderr                 # the failure was reported
    assert [r["index"] for r in rows(str(tmp_path / "flaky.jsonl"))] == list(range(20))


class SlowThenFailingMuseTalk:
    """MuseTalk, slow on frames before 28 and failing on the first batch from 28 on."""
    name = "musetalk"
    required_weights = staticmethod(lambda params: [])

    def __init__(self, stage):
        from lipgraph.stages.unets.musetalk import MuseTalkUNet
        self.inner = MuseTalkUNet(stage)

    def run(self, batch):
        import time
        if batch.index >= 28:
            raise RuntimeError(f"synthetic failure in the window at {batch.index}")
        time.sleep(1.0)
        self.inner.run(batch)


@pytest.mark.parametrize("runner", ["process", "ray"])
def test_a_failing_part_stops_the_others(local_ray, clip, runner):
    folder, video, audio, pattern, sets = clip
    out = str(folder / f"fail-{runner}.mkv")
    proc = subprocess.run(graph_command(GRAPH, video, audio, out, sets + [
        "unet.model=tests.test_ray_runner:SlowThenFailingMuseTalk", "unet.fallback=none"], "--no-trace", "--quiet",
        "--runner", runner, "--parallel", "2"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert "stage 'unet'" in proc.stderr and "synthetic failure in the window at 28" in proc.stderr
    first = json.load(open(f"{out}.profile.json.part-0.json"))
    assert first["status"] == "failed" and first["error"]["kind"] == "cancelled"
    assert first["stages"]["unet"]["items_in"] < pattern[:28].count("F")     # stopped early
    assert not os.path.exists(out) and not os.path.exists(os.path.join(folder, f".fail-{runner}.mkv.lipgraph"))


def test_actor_options_follow_the_group_declaration():
    from lipgraph.graph.spec import GroupSpec
    from lipgraph.runners.ray_runner import actor_options
    gpu = GroupSpec("gpu", ["unet"], gpus=1, cpus=2, resources={"a100": 1})
    opts, unmet = actor_options(gpu, {"CPU": 16, "GPU": 4, "a100": 2})
    assert (opts["num_gpus"], opts["num_cpus"], opts["resources"], unmet) == (1, 2, {"a100": 1}, None)
    opts, unmet = actor_options(gpu, {"CPU": 16})              # no GPUs: runs on CPU, a100 missing
    assert opts["num_gpus"] == 0 and "resource 'a100'" in unmet and "GPU" not in unmet
    opts, unmet = actor_options(GroupSpec("io", ["mux"], cpus=64), {"CPU": 16})
    assert "64 CPU(s), the cluster has 16" in unmet


def test_a_graph_the_cluster_cannot_place_is_refused(local_ray, tmp_path):
    out = str(tmp_path / "o.jsonl")
    doc = bypass_graph(out, 10, "alternate")
    doc["groups"] = {"gpu": {"resources": {"unobtainium": 1}}}
    res = RayRunner(load_graph(write_graph(tmp_path, doc), []), RunOptions(progress=False, table=False)).run()
    assert res.exit_code == 2 and "resource 'unobtainium'" in res.error["message"]
    assert not os.path.exists(out)
