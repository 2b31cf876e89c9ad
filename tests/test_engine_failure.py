"""Failure handling particular to the process runner: a replica's error, a group process
killed from outside, the runner itself killed, and a clean success. (The failures every
runner shares are in tests/test_runner_failures.py.)"""
import os
import signal
import time

import psutil

from lipgraph.graph import shm
from tests.engine_util import (assert_clean, bypass_graph, finish, slow_graph, start, wait_for_children,
                               write_graph)


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
