"""Failure handling: a stage error, a killed process or a signal stops the whole run fast,
with one clear message, and leaves no processes, shared memory or partial output behind."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from lipgraph.graph import shm
from tests.engine_util import bypass_graph, write_graph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def slow_graph(tmp_path, out, **stage_params):
    """A graph that would run for ~40 s: 800 items, the source sleeping 50 ms each."""
    doc = bypass_graph(out, 800, "runs:6:3", queue_size=2, workers=2)
    doc["stages"]["src"]["params"]["delay_s"] = 0.05
    for key, value in stage_params.items():
        stage, _, param = key.partition("__")
        doc["stages"][stage].setdefault("params", {})[param] = value
    return write_graph(tmp_path, doc)


def start(path, *args):
    return subprocess.Popen([sys.executable, "run_graph.py", path, "--quiet", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def descendants(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_for_children(proc, n, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in descendants(proc.pid) if "spawn_main" in " ".join(k.cmdline())]
        if len(kids) >= n:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"only {len(kids)} group processes started")


def assert_clean(kids, run_pid, out, timeout=5.0):
    deadline = time.monotonic() + timeout
    alive = kids
    while time.monotonic() < deadline:
        alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, f"processes left: {[k.pid for k in alive]}"
    left = [n for n in shm.segments() if n.startswith(f"{shm.PREFIX}{run_pid}x")]
    assert not left, f"shared memory left: {left}"
    folder = os.path.dirname(out)
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(folder) if ".partial" in f], os.listdir(folder)


def finish(proc, timeout=30):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


# the failing item arrives ~1.4 s after start; stopping everything takes well under 5 s more
STOP_DEADLINE_S = 1.5 + 5.0


def run_to_failure(tmp_path, where: str, at: int):
    """Run the slow graph with `stage__param: at` (a failure or a kill) to its end:
    (stderr, failing stage, seconds from the start of the stages, their processes, runner pid,
    output path)."""
    out = str(tmp_path / "out.jsonl")
    proc = start(slow_graph(tmp_path, out, **{where: at}))
    kids = wait_for_children(proc, 4)
    t0 = time.monotonic()
    code, err = finish(proc)
    assert code == 1, err
    return err, where.split("__")[0], time.monotonic() - t0, kids, proc.pid, out


@pytest.mark.parametrize("where", ["model__fail_at", "src__fail_at", "sink__fail_at", "route__fail_at"])
def test_stage_exception_stops_run_fast(tmp_path, where):
    err, stage, elapsed, kids, pid, out = run_to_failure(tmp_path, where, 27)
    where_txt = {"src": "failed after item 26 (producing the next one)",
                 "model": "failed at items 27..30 (one batch)"}.get(stage, "failed at item 27")
    assert f"stage '{stage}'" in err and where_txt in err, err
    assert "SyntheticFailure: synthetic failure at index 27" in err
    assert "Traceback (most recent call last)" in err
    assert elapsed < STOP_DEADLINE_S
    assert_clean(kids, pid, out)


def test_replica_exception_names_the_stage(tmp_path):
    out = str(tmp_path / "out.jsonl")
    doc = bypass_graph(out, 400, "none", queue_size=2, workers=2)
    doc["stages"]["src"]["params"]["delay_s"] = 0.02
    doc["stages"]["unb"]["type"] = "synthetic_map"
    doc["stages"]["unb"]["params"] = {"fail_at": 13}
    proc = start(write_graph(tmp_path, doc))
    kids = wait_for_children(proc, 4)
    code, err = finish(proc)
    assert code == 1 and "stage 'unb'" in err and "failed at items 12..15 (one batch)" in err, err
    assert "synthetic failure at index 13" in err
    assert_clean(kids, proc.pid, out)


@pytest.mark.parametrize("where,group", [("model__kill_at", "gpu"), ("src__kill_at", "io")])
def test_killed_process_detected(tmp_path, where, group):
    err, stage, elapsed, kids, pid, out = run_to_failure(tmp_path, where, 30)
    assert f"process of group '{group}'" in err and "killed by signal SIGKILL" in err, err
    expect = ("processing items 27..30" if stage == "model"      # the model takes batches
              else "producing the item after 29")
    assert f"stage '{stage}' was {expect}" in err, err
    assert elapsed < STOP_DEADLINE_S
    assert_clean(kids, pid, out)


def test_killed_from_outside(tmp_path):
    out = str(tmp_path / "out.jsonl")
    proc = start(slow_graph(tmp_path, out))
    kids = wait_for_children(proc, 4)
    time.sleep(1.0)
    victim = next(k for k in kids if "spawn_main" in " ".join(k.cmdline()))
    t_kill = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    code, err = finish(proc)
    assert code == 1 and "killed by signal SIGKILL" in err, err
    assert time.monotonic() - t_kill < 5.0
    assert_clean(kids, proc.pid, out)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_stop_cleanly(tmp_path, sig, code):
    out = str(tmp_path / "out.jsonl")
    proc = start(slow_graph(tmp_path, out))
    kids = wait_for_children(proc, 4)
    time.sleep(1.5)
    t0 = time.monotonic()
    proc.send_signal(sig)
    rc, err = finish(proc)
    assert rc == code, err
    assert f"interrupted by {signal.Signals(sig).name}" in err
    assert time.monotonic() - t0 < 5.0
    assert_clean(kids, proc.pid, out)


def test_runner_killed_children_follow_and_segments_swept(tmp_path):
    out = str(tmp_path / "out.jsonl")
    doc = bypass_graph(out, 800, "runs:6:3", queue_size=4, shape=(256, 256, 3))
    doc["stages"]["model"]["params"] = {"per_item_s": 0.05}   # keep frames queued in flight
    proc = start(write_graph(tmp_path, doc))
    kids = wait_for_children(proc, 3)
    time.sleep(1.5)
    assert [n for n in shm.segments() if n.startswith(f"{shm.PREFIX}{proc.pid}x")], "nothing in flight"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids):
        time.sleep(0.05)
    assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    shm.sweep_stale()       # what the next run does first
    assert not [n for n in shm.segments() if n.startswith(f"{shm.PREFIX}{proc.pid}x")]


def test_success_leaves_nothing_behind(tmp_path):
    out = str(tmp_path / "out.jsonl")
    proc = start(write_graph(tmp_path, bypass_graph(out, 50, "alternate", shape=(128, 128, 3))),
                 "--profile", str(tmp_path / "p.json"))
    kids = wait_for_children(proc, 3)
    code, err = finish(proc)
    assert code == 0, err
    assert os.path.exists(out)
    os.unlink(out)
    assert_clean(kids, proc.pid, out)
