"""The same failures on every runner (process, inline, Ray): a stage raising, SIGINT or
SIGTERM, a worker killed. Each stops the run with one message naming the stage and the item,
the exit status the command line documents, and nothing left behind: no worker, no shared
memory, nothing at the output path."""
import importlib.util
import json
import os
import signal
import threading
import time

import psutil
import pytest

from lipgraph.graph import shm
from lipgraph.graph.spec import load_graph
from lipgraph.runners import RunOptions, format_error, get_runner
from lipgraph.runners.errors import RunError
from tests.engine_util import (assert_clean, bypass_graph, descendants, finish, ray_actors_alive, slow_graph,
                               start, write_graph)

HAS_RAY = importlib.util.find_spec("ray") is not None
RAY = pytest.param("ray", marks=pytest.mark.skipif(not HAS_RAY, reason="ray is not installed"))
RUNNERS = ["process", "inline", RAY]
# from the run's start to everything stopped: the failing item comes ~1.4 s after the
# source starts; Ray also kills its actors and hands their traces back
STOP_S = {"process": 1.5 + 5.0, "inline": 1.5 + 5.0, "ray": 30.0}
# Ray's own processes (the local cluster the command line started) take a while to go
GONE_S = {"process": 5.0, "inline": 5.0, "ray": 30.0}


@pytest.fixture(scope="module")
def local_ray():
    if not HAS_RAY:
        pytest.skip("ray is not installed")
    import ray

    from lipgraph.runners.ray_runner import init_ray
    init_ray()
    yield ray
    ray.shutdown()


def launch(tmp_path, runner, **stage_params):
    """The slow graph on `runner`, on the command line, once its sink has opened: (process,
    the output path, every process it started, when the sink opened)."""
    out = str(tmp_path / "out.jsonl")
    proc = start(slow_graph(tmp_path, out, **stage_params), "--runner", runner, "--no-trace")
    deadline = time.monotonic() + 120
    while not [f for f in os.listdir(tmp_path) if ".partial" in f]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    return proc, out, descendants(proc.pid), time.monotonic()


def cmdline(p) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:            # gone meanwhile
        return ""


def check_clean(runner, proc, kids, out):
    assert_clean(kids, proc.pid, out, timeout=GONE_S[runner])
    assert shm.semaphores(proc.pid) == []


# ----- a stage raises --------------------------------------------------------------------
WHERE = {"src": "failed after item 26 (producing the next one)", "route": "failed at item 27",
         "model": "failed at items 27..30 (one batch)", "sink": "failed at item 27"}
STAGE_CASES = ([(runner, stage) for runner in ("process", "inline") for stage in WHERE]
               + [pytest.param("ray", "model", marks=RAY.marks)])


@pytest.mark.parametrize("runner,stage", STAGE_CASES)
def test_stage_error_stops_the_run(tmp_path, runner, stage):
    proc, out, kids, t0 = launch(tmp_path, runner, **{f"{stage}__fail_at": 27})
    code, err = finish(proc, timeout=120)
    assert code == 1, err
    assert f"stage '{stage}'" in err and WHERE[stage] in err, err
    assert "SyntheticFailure: synthetic failure at index 27" in err
    assert "Traceback (most recent call last)" in err
    assert time.monotonic() - t0 < STOP_S[runner]
    check_clean(runner, proc, kids, out)


@pytest.mark.parametrize("runner", RUNNERS)
def test_stage_error_result(tmp_path, runner, request):
    """The run's result, its profile and what is left, seen from the caller's process."""
    if runner == "ray":
        request.getfixturevalue("local_ray")
    out, prof = str(tmp_path / "o.jsonl"), str(tmp_path / "p.json")
    doc = bypass_graph(out, 300, "none", workers=2)
    doc["stages"]["model"]["params"] = {"fail_at": 41}
    r = get_runner(runner)(load_graph(write_graph(tmp_path, doc)),
                           RunOptions(progress=False, table=False, profile_path=prof))
    kids = {p.pid for p in psutil.Process().children(recursive=True)}
    res = r.run()
    assert (res.status, res.exit_code) == ("failed", 1)
    err = res.error
    assert isinstance(err, RunError) and err.kind == "stage"
    assert (err.stage, err.type, err.index, err.last) == ("model", "synthetic_batch_map", 40, 43)
    assert err["stage"] == "model" and "synthetic failure at index 41" in err["traceback"]
    assert format_error(err).startswith("stage 'model' (synthetic_batch_map, group gpu) failed at "
                                        "items 40..43 (one batch): SyntheticFailure: synthetic failure")
    assert json.load(open(prof))["error"] == json.loads(json.dumps(err.to_dict()))
    assert not os.path.exists(out) and not [f for f in os.listdir(tmp_path) if ".partial" in f]
    assert not os.path.exists(r.run_dir)
    assert not shm.segments(r.run_dir.split("lipgraph-run-")[1].rsplit("-", 1)[0])
    if runner == "ray":
        assert len(r.handles) == 5 and not ray_actors_alive(r.handles)   # 4 groups, the hub
    else:
        # new processes apart from multiprocessing's resource tracker, which stays
        left = [p for p in psutil.Process().children(recursive=True)
                if p.pid not in kids and "resource_tracker" not in cmdline(p)]
        psutil.wait_procs(left, timeout=5)
        assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not [t for t in threading.enumerate() if t.name == "inline"]


# ----- signals ---------------------------------------------------------------------------
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("runner", RUNNERS)
def test_signal_stops_the_run(tmp_path, runner, sig, code):
    proc, out, kids, _ = launch(tmp_path, runner)
    time.sleep(1.5)
    t0 = time.monotonic()
    proc.send_signal(sig)
    rc, err = finish(proc, timeout=60)
    assert rc == code, err[-3000:]
    assert f"interrupted by {signal.Signals(sig).name}" in err
    assert time.monotonic() - t0 < STOP_S[runner] - 1.5
    check_clean(runner, proc, kids, out)


# ----- a worker killed (the inline runner has none apart from itself) ---------------------
KILLED = {("process", "model"): ["process of group 'gpu'", "killed by signal SIGKILL",
                                 "stage 'model' was processing items 27..30"],
          ("process", "src"): ["process of group 'io'", "killed by signal SIGKILL",
                               "stage 'src' was producing the item after 29"],
          ("ray", "model"): ["actor of group 'gpu' (stages: route, model) died"]}


@pytest.mark.parametrize("runner,stage", [("process", "model"), ("process", "src"),
                                          pytest.param("ray", "model", marks=RAY.marks)])
def test_killed_worker_is_named(tmp_path, runner, stage):
    proc, out, kids, t0 = launch(tmp_path, runner, **{f"{stage}__kill_at": 30})
    code, err = finish(proc, timeout=120)
    assert code == 1, err
    for text in KILLED[(runner, stage)]:
        assert text in err, err
    assert time.monotonic() - t0 < STOP_S[runner]
    check_clean(runner, proc, kids, out)
