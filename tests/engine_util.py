"""Helpers for engine tests: write a synthetic graph, run it (here or as the command line),
read the sink's rows, check that a run left nothing behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import yaml

from lipgraph.graph import shm
from lipgraph.graph.spec import load_graph
from lipgraph.runners import RunOptions, get_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_graph(tmp_path, doc: dict, name: str = "g.yaml") -> str:
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def bypass_graph(out_path: str, count: int, bypass: str, batch_size: int = 4, queue_size: int = 2,
                 rebatch: int | None = None, workers: int = 1, grouped: bool = True,
                 shape=(4, 4, 3)) -> dict:
    """source -> router -(main)-> model [-> rebatch] -> unbatch -> sink(main)
                        -(bypass)-----------------------------------> sink(bypass)"""
    g = (lambda name: name) if grouped else (lambda name: "all")
    stages = {
        "src": {"type": "synthetic_source", "group": g("io"),
                "params": {"count": count, "shape": list(shape)}},
        "route": {"type": "synthetic_router", "group": g("gpu"),
                  "params": {"batch_size": batch_size, "bypass": bypass}},
        "model": {"type": "synthetic_batch_map", "group": g("gpu")},
    }
    edges = ["src.out -> route.in", "route.main -> model.in"]
    last = "model"
    if rebatch:
        stages["rebatch"] = {"type": "synthetic_rebatch", "group": g("gpu"),
                             "params": {"batch_size": rebatch}}
        edges.append("model.out -> rebatch.in")
        last = "rebatch"
    stages["unb"] = {"type": "synthetic_unbatch", "group": g("post") if workers == 1 else "post",
                     "workers": workers}
    stages["sink"] = {"type": "synthetic_sink", "group": g("io"),
                      "params": {"path": out_path, "inputs": ["main", "bypass"]}}
    edges += [f"{last}.out -> unb.in", "unb.out -> sink.main", "route.bypass -> sink.bypass"]
    return {"name": "bypass", "queue_size": queue_size, "stages": stages, "edges": edges}


def run(path: str, runner: str = "process", sets=(), **opts):
    graph = load_graph(path, list(sets))
    options = RunOptions(progress=False, table=False, **opts)
    return get_runner(runner)(graph, options).run()


def rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def slow_graph(tmp_path, out, **stage_params):
    """A graph that would run for ~40 s: 800 items, the source sleeping 50 ms each;
    `stage__param=value` sets a stage's param (e.g. model__fail_at=27)."""
    doc = bypass_graph(out, 800, "runs:6:3", queue_size=2, workers=2)
    doc["stages"]["src"]["params"]["delay_s"] = 0.05
    for key, value in stage_params.items():
        stage, _, param = key.partition("__")
        doc["stages"][stage].setdefault("params", {})[param] = value
    return write_graph(tmp_path, doc)


def start(path, *args, **kw):
    """The command line on a graph file, quiet, in the background."""
    return subprocess.Popen([sys.executable, "run_graph.py", path, "--quiet", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=30):
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def descendants(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_for_children(proc, n, timeout=20.0):
    """The process runner's group processes, once `n` of them have started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in descendants(proc.pid) if "spawn_main" in " ".join(k.cmdline())]
        if len(kids) >= n:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"only {len(kids)} group processes started")


def assert_clean(kids, run_pid, out, timeout=5.0):
    """After a run: its processes gone, its shared memory removed, nothing at (or beside) the
    output path."""
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


def ray_actors_alive(handles, within_s: float = 10.0) -> list:
    """Actors of a finished run that still answer after `within_s` (there must be none). A
    kill reaches an actor through the cluster's control plane, so a call made at once may
    still be answered."""
    import ray
    deadline = time.monotonic() + within_s
    while True:
        left = []
        for h in handles:
            try:
                ray.get(h.__ray_ready__.remote(), timeout=10)
                left.append(h)
            except ray.exceptions.RayActorError:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)
