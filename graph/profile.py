"""The run profile: per-stage figures, edge depths, memory, and the bottleneck.

Built from the snapshots every process sends (`graph.stats`), written as JSON, printed as a
table, and paired with a Chrome Trace Event file (open it in https://ui.perfetto.dev).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter

from lipgraph.media.partial import written_aside

from .stats import LatencyHistogram


def _sum(snaps: list[dict], key: str) -> float:
    return sum(s.get(key) or 0 for s in snaps)


def build_profile(graph, processes: dict, *, runner: str, status: str, started: float,
                  ended: float | None = None, error: dict | None = None, total: int | None = None,
                  extra: dict | None = None) -> dict:
    """`processes`: (group, replica) -> {"pid", "stages": [stage snapshot], "edges": {...},
    "peak_rss", "cuda_peak"} as sent by each process (the inline runner sends one)."""
    ended = ended or time.time()
    by_stage: dict[str, list[dict]] = {}
    edges: dict[str, dict] = {}
    procs = []
    for (group, replica), p in sorted(processes.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        for s in p.get("stages", []):
            by_stage.setdefault(s["stage"], []).append(s)
        for name, d in (p.get("edges") or {}).items():
            edges[name] = d
        procs.append({"group": group, "replica": replica, "pid": p.get("pid"),
                      "peak_rss_bytes": p.get("peak_rss", 0), "cuda_peak_bytes": p.get("cuda_peak"),
                      "rss_over_time": (p.get("rss") or {}).get("points", [])})

    firsts = [s["first_t"] for ss in by_stage.values() for s in ss if s.get("first_t")]
    lasts = [s["last_t"] for ss in by_stage.values() for s in ss if s.get("last_t")]
    stream_wall = (max(lasts) - min(firsts)) if firsts and lasts else 0.0

    stages = {}
    sink_latency = LatencyHistogram()
    for name in graph.topo_order():
        spec = graph.stages[name]
        snaps = by_stage.get(name, [])
        workers = max(1, spec.workers)
        items_in, items_out = int(_sum(snaps, "items_in")), int(_sum(snaps, "items_out"))
        busy, wait, blocked = _sum(snaps, "busy_s"), _sum(snaps, "wait_s"), _sum(snaps, "blocked_s")
        sizes, counters, reasons = Counter(), Counter(), {}
        lat = LatencyHistogram()
        for s in snaps:
            sizes.update({int(k): v for k, v in (s.get("batch_sizes") or {}).items()})
            counters.update(s.get("counters") or {})
            for k, r in (s.get("reasons") or {}).items():
                reasons.setdefault(k, Counter()).update(r)
            if s.get("latency"):
                lat.merge(LatencyHistogram.from_dict(s["latency"]))
        n_batches = sum(sizes.values())
        processed = items_in if spec.ports[0] else items_out
        stage = {
            "type": spec.type, "group": spec.group, "workers": workers,
            "items_in": items_in, "items_out": items_out,
            "batches": n_batches,
            "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
            "mean_batch": (sum(k * v for k, v in sizes.items()) / n_batches) if n_batches else None,
            "busy_s": round(busy, 4), "wait_input_s": round(wait, 4),
            "blocked_output_s": round(blocked, 4), "setup_s": round(_sum(snaps, "setup_s"), 4),
            "throughput_ips": round(processed / stream_wall, 3) if stream_wall > 0 else None,
            "capacity_ips": round(processed / busy, 3) if busy > 0 else None,
            "utilization": round(busy / (stream_wall * workers), 4) if stream_wall > 0 else None,
            "counters": dict(counters), "reasons": {k: dict(r) for k, r in reasons.items()},
            "last_index": max((s["last_index"] for s in snaps if s.get("last_index") is not None),
                              default=None),
        }
        if lat.n:
            stage["latency_p50_s"] = round(lat.quantile(0.5), 5)
            stage["latency_p95_s"] = round(lat.quantile(0.95), 5)
            sink_latency.merge(lat)
        stages[name] = stage

    edge_info = {}
    for e in graph.edges:
        d = edges.get(e.name, {})
        edge_info[e.name] = {
            "queue_size": e.queue_size,
            "cross_process": graph.is_cross_group(e),
            "depth_max": d.get("max"), "depth_mean": round(d.get("mean") or 0.0, 3),
            "depth": d.get("points", []),
        }

    util = {n: s["utilization"] for n, s in stages.items() if s["utilization"] is not None}
    bottleneck = None
    if util:
        name = max(util, key=util.get)
        bottleneck = {"stage": name, "utilization": util[name],
                      "why": "highest share of the streaming time spent working (busy / (wall x workers))"}
    sinks = [n for n in graph.sinks()]
    items_done = sum(stages[n]["items_in"] for n in sinks) if sinks else 0
    profile = {
        "graph": graph.name, "path": graph.path, "runner": runner, "status": status,
        "started_at": started, "wall_s": round(ended - started, 3),
        "stream_wall_s": round(stream_wall, 3), "items_total": total, "items_done": items_done,
        "error": error, "stages": stages, "edges": edge_info, "processes": procs,
        "peak_rss_total_bytes": sum(p["peak_rss_bytes"] or 0 for p in procs),
        "cuda_peak_bytes": max((p["cuda_peak_bytes"] or 0 for p in procs), default=0) or None,
        "bottleneck": bottleneck,
        "latency_p50_s": round(sink_latency.quantile(0.5), 5) if sink_latency.n else None,
        "latency_p95_s": round(sink_latency.quantile(0.95), 5) if sink_latency.n else None,
    }
    if extra:
        profile.update(extra)
    return profile


@contextlib.contextmanager
def _replacing(path: str):
    """A text file written aside and renamed onto `path` once complete; the temporary name is
    the writer's, so the next run sweeps what a killed one left (`media.partial`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with written_aside(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f


def write_json_atomic(path: str, data) -> None:
    with _replacing(path) as f:
        json.dump(data, f, indent=1)


def merge_traces(parts: list[str], out_path: str) -> int:
    """Concatenate per-process JSON-lines trace parts into one Chrome Trace file."""
    n = 0
    with _replacing(out_path) as f:
        f.write('{"displayTimeUnit":"ms","traceEvents":[\n')
        for part in filter(os.path.exists, parts):
            with open(part, encoding="utf-8") as src:
                for line in filter(None, map(str.strip, src)):
                    try:
                        json.loads(line)   # a killed process may leave a torn last line
                    except ValueError:
                        continue
                    f.write((",\n" if n else "") + line)
                    n += 1
        f.write("\n]}\n")
    return n


def _fmt(v, spec="{:.1f}", none="-"):
    return none if v is None else spec.format(v)


def format_table(profile: dict) -> str:
    """A fixed-width per-stage table with the bottleneck named under it."""
    head = ["stage", "type", "group", "w", "in", "out", "batch", "busy s", "wait s", "block s",
            "items/s", "cap/s", "util", "p50 ms"]
    rows = []
    for name, s in profile["stages"].items():
        rows.append([
            name, s["type"], s["group"], str(s["workers"]), str(s["items_in"]), str(s["items_out"]),
            _fmt(s["mean_batch"], "{:.1f}"), _fmt(s["busy_s"], "{:.2f}"), _fmt(s["wait_input_s"], "{:.2f}"),
            _fmt(s["blocked_output_s"], "{:.2f}"), _fmt(s["throughput_ips"], "{:.1f}"),
            _fmt(s["capacity_ips"], "{:.1f}"),
            _fmt(None if s["utilization"] is None else 100 * s["utilization"], "{:.0f}%"),
            _fmt(None if s.get("latency_p50_s") is None else 1e3 * s["latency_p50_s"], "{:.0f}"),
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    b = profile.get("bottleneck")
    tail = []
    if b:
        tail.append(f"bottleneck: {b['stage']} ({100 * b['utilization']:.0f}% busy)")
    if profile.get("latency_p50_s") is not None:
        tail.append(f"latency p50 {1e3 * profile['latency_p50_s']:.0f} ms, "
                    f"p95 {1e3 * profile['latency_p95_s']:.0f} ms")
    tail.append(f"wall {profile['wall_s']:.2f} s, {profile['items_done']} items, "
                f"peak RSS {profile['peak_rss_total_bytes'] / 2**20:.0f} MiB over "
                f"{len(profile['processes'])} process(es)")
    if profile.get("cuda_peak_bytes"):
        tail.append(f"peak CUDA memory {profile['cuda_peak_bytes'] / 2**20:.0f} MiB")
    fallbacks = {n: s["reasons"] for n, s in profile["stages"].items() if s.get("reasons")}
    for n, reasons in fallbacks.items():
        for key, r in reasons.items():
            tail.append(f"{n}: {key}: " + ", ".join(f"{why} x{c}" for why, c in r.items()))
    return "\n".join(out + [""] + tail)
