#!/usr/bin/env python3
"""Pipeline efficiency of the engine itself, on synthetic stages with known costs.

Each case is a chain or a diamond of stages whose per-item cost is known (`sleep`: the
stage waits, as on I/O or a GPU kernel; `spin`: it holds a CPU core). The ideal throughput
of a pipeline is 1 / (the slowest stage's per-item time); for CPU-bound stages it is also
capped by the cores: cores / (sum of per-item times) across processes, and 1 / sum inside
one process (the GIL). The script prints, per case and queue size:

  efficiency = measured throughput / ideal throughput

and whether the profile's busy/wait split names the slowest stage as the bottleneck.
All cases run in one invocation, so the figures compare like with like.

    python bench/engine.py [--items 300] [--queues 1,2,4,8] [--cases all|NAME,...] [--runner ray]
"""
from __future__ import annotations

import os
import tempfile

import yaml

from _common import parser
from lipgraph.graph.spec import load_graph
from lipgraph.runners import RunOptions, get_runner
import lipgraph.stages.synthetic  # noqa: F401  (registers the synthetic_* stage types)

PARAM = {"sleep": "delay_s", "spin": "spin_s"}


def chain(costs: list[float], kind: str, placement: str) -> tuple[dict, list[str], dict]:
    """source -> s1 -> ... -> sN -> sink; placement 'processes' (a group per stage) or
    'threads' (every stage in one group)."""
    stages = {"src": {"type": "synthetic_source", "group": "g_src", "params": {}}}
    edges, last, cost = [], "src", {}
    for i, c in enumerate(costs, 1):
        name = f"s{i}"
        stages[name] = {"type": "synthetic_map", "group": f"g_{name}" if placement == "processes" else "g_all",
                        "params": {PARAM[kind]: c}}
        edges.append(f"{last}.out -> {name}.in")
        last, cost[name] = name, c
    stages["sink"] = {"type": "synthetic_sink", "group": "g_sink", "params": {}}
    edges.append(f"{last}.out -> sink.in")
    return stages, edges, cost


def diamond(a: list[float], b: list[float], kind: str, placement: str):
    """source -> tee -> (a1..an | b1..bm) -> zip -> sink."""
    per = (lambda n: f"g_{n}") if placement == "processes" else (lambda n: "g_all")
    stages = {"src": {"type": "synthetic_source", "group": "g_src", "params": {}},
              "tee": {"type": "synthetic_tee", "group": "g_src"},
              "zip": {"type": "synthetic_zip", "group": "g_sink"},
              "sink": {"type": "synthetic_sink", "group": "g_sink", "params": {}}}
    edges, cost = ["src.out -> tee.in"], {}
    for branch, costs in (("a", a), ("b", b)):
        last = f"tee.{branch}"
        for i, c in enumerate(costs, 1):
            name = f"{branch}{i}"
            stages[name] = {"type": "synthetic_map", "group": per(name), "params": {PARAM[kind]: c}}
            edges.append(f"{last} -> {name}.in")
            last, cost[name] = f"{name}.out", c
        edges.append(f"{last} -> zip.{branch}")
    edges.append("zip.out -> sink.in")
    return stages, edges, cost


def cases() -> dict:
    """name -> (builder args). Costs in seconds per item."""
    return {
        "chain3-sleep-proc": lambda: chain([0.004, 0.010, 0.006], "sleep", "processes"),
        "chain5-sleep-proc": lambda: chain([0.003, 0.006, 0.010, 0.004, 0.002], "sleep", "processes"),
        "chain3-sleep-threads": lambda: chain([0.004, 0.010, 0.006], "sleep", "threads"),
        "diamond-sleep-proc": lambda: diamond([0.004, 0.010], [0.006], "sleep", "processes"),
        "diamond-sleep-threads": lambda: diamond([0.004, 0.010], [0.006], "sleep", "threads"),
        "chain3-spin-proc": lambda: chain([0.002, 0.008, 0.004], "spin", "processes"),
        "chain3-spin-threads": lambda: chain([0.002, 0.008, 0.004], "spin", "threads"),
    }


def ideal_ips(cost: dict, kind: str, placement: str, cores: int) -> float:
    slowest = 1.0 / max(cost.values())
    if kind == "sleep":
        return slowest
    if placement == "threads":        # one process: the GIL runs one stage at a time
        return 1.0 / sum(cost.values())
    return min(slowest, cores / sum(cost.values()))


def run_case(folder: str, name: str, build, items: int, queue: int, cores: int,
             runner: str = "process") -> dict:
    stages, edges, cost = build()
    kind = "spin" if "spin" in name else "sleep"
    placement = "threads" if "threads" in name else "processes"
    stages["src"]["params"].update({"count": items, "shape": [4, 4, 3]})
    path = os.path.join(folder, f"{name}-q{queue}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"name": name, "queue_size": queue, "stages": stages, "edges": edges}, f,
                       sort_keys=False)
    opts = RunOptions(progress=False, table=False, profile_path=path + ".profile.json", trace_path=None)
    res = get_runner(runner)(load_graph(path, []), opts).run()
    if not res.ok:
        raise SystemExit(f"{name} q={queue} failed: {res.error}")
    prof = res.profile
    ips = items / prof["stream_wall_s"]
    ideal = ideal_ips(cost, kind, placement, cores)
    slowest = max(cost, key=cost.get)
    named = (prof.get("bottleneck") or {}).get("stage")
    return {"case": name, "queue": queue, "ips": ips, "ideal": ideal, "eff": ips / ideal,
            "slowest": slowest, "named": named, "kind": kind}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--queues", default="1,2,4,8")
    ap.add_argument("--cases", default="all")
    ap.add_argument("--runner", choices=("process", "ray"), default="process",
                    help="ray: the same graphs as Ray actors on a local Ray (its per-message cost)")
    a = ap.parse_args()
    if a.runner == "ray":
        from lipgraph.runners.ray_runner import init_ray
        init_ray()
    table = cases()
    names = list(table) if a.cases == "all" else a.cases.split(",")
    queues = [int(q) for q in a.queues.split(",")]
    cores = os.cpu_count() or 1
    folder = tempfile.mkdtemp(prefix="lipgraph-bench-engine-")
    print(f"{a.items} items per run, {cores} cores, {a.runner} runner; "
          "efficiency = measured / ideal throughput\n")
    print(f"{'case':<24}{'queue':>6}{'items/s':>10}{'ideal':>9}{'efficiency':>12}  bottleneck named")
    rows = []
    for name in names:
        for q in queues:
            r = run_case(folder, name, table[name], a.items, q, cores, a.runner)
            rows.append(r)
            ok = "yes" if r["named"] == r["slowest"] else f"NO ({r['named']})"
            print(f"{name:<24}{q:>6}{r['ips']:>10.1f}{r['ideal']:>9.1f}{r['eff']:>12.3f}  "
                  f"{r['slowest']}: {ok}", flush=True)
    sleep4 = [r["eff"] for r in rows if r["kind"] == "sleep" and r["queue"] >= 4]
    if sleep4:
        print(f"\nsleep-bound, queue >= 4: efficiency min {min(sleep4):.3f}, "
              f"mean {sum(sleep4) / len(sleep4):.3f} (target >= 0.9)")
    named = sum(r["named"] == r["slowest"] for r in rows)
    print(f"slowest stage named as the bottleneck in {named} of {len(rows)} runs")


if __name__ == "__main__":
    main()
