"""Helpers for engine tests: write a synthetic graph, run it, read the sink's rows."""
from __future__ import annotations

import json
import os

import yaml

from lipgraph.graph.spec import load_graph
from lipgraph.runners import RunOptions, get_runner


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
