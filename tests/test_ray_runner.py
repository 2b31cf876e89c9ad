"""The same graph files on Ray (a local instance): same output as the process runner,
failures reported and cleaned up, split jobs equal to one pipeline, job batches isolated."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from graph.spec import load_graph  # noqa: E402
from media.video import VideoReader  # noqa: E402
from runners import RunOptions  # noqa: E402
from runners.ray_runner import RayRunner, init_ray  # noqa: E402
from tests.engine_util import bypass_graph, rows, run, write_graph  # noqa: E402
from tools.synthetic import graph_command, make_clip, model_sets, read_id, tiny_weights  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH = os.path.join(ROOT, "configs", "graphs", "musetalk.yaml")


@pytest.fixture(scope="module")
def local_ray():
    init_ray()
    yield ray
    ray.shutdown()


def alive(handles):
    """Actors of a finished run that still answer (there must be none)."""
    left = []
    for h in handles:
        try:
            ray.get(h.__ray_ready__.remote(), timeout=10)
            left.append(h)
        except ray.exceptions.RayActorError:
            pass
    return left


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


def test_stage_failure_stops_the_job_and_kills_its_actors(local_ray, tmp_path):
    out = str(tmp_path / "o.jsonl")
    doc = bypass_graph(out, 300, "none", workers=2)
    doc["stages"]["model"]["params"] = {"fail_at": 41}
    runner = RayRunner(load_graph(write_graph(tmp_path, doc)), RunOptions(progress=False, table=False))
    res = runner.run()
    assert res.status == "failed" and res.exit_code == 1
    assert res.error["stage"] == "model" and res.error["index"] == 40     # the batch 40..43
    assert "synthetic failure at index 41" in res.error["traceback"]
    assert not os.path.exists(out) and not [f for f in os.listdir(tmp_path) if ".partial" in f]
    assert not alive(runner.handles)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    weights = tiny_weights(str(folder / "models"))
    pattern = "F" * 20 + "C" * 8 + "F" * 22
    video, audio = make_clip(str(folder), pattern)
    return folder, video, audio, pattern, model_sets(weights) + ["mux.codec=ffv1", "mux.pix_fmt=bgr0"]


@pytest.mark.parametrize("runner", ["ray", "process"])
def test_split_job_equals_one_pipeline(local_ray, clip, runner):
    folder, video, audio, pattern, sets = clip
    one, split = str(folder / "one.mkv"), str(folder / f"split-{runner}.mkv")
    side1, side2 = str(folder / "one.jsonl"), str(folder / f"split-{runner}.jsonl")
    for out, side, extra in ((one, side1, []), (split, side2, ["--runner", runner, "--parallel", "2"])):
        proc = subprocess.run(graph_command(GRAPH, video, audio, out, sets + [f"mux.sidecar={side}"],
                                            "--quiet", "--no-trace", *extra),
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 parts" in proc.stderr
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
