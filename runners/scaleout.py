"""Scaling out one graph file: a long video split into parts run side by side, and batches of
jobs. Both work with any runner: `ray` spreads them over a cluster's GPUs and nodes,
`process` runs them on this machine.

Split jobs: the output's frames are cut into N contiguous parts, each cut moved to a nearby
keyframe (encoders place keyframes at scene cuts); each part is an independent pipeline (its
own actors or processes) that starts its source at the part's first frame and stops before
the next part's, writing segments into its own folder. A part decodes a few frames before
its start so tracking and smoothing pick up; those pre-roll frames bypass the models, so
no temporal window (LatentSync) spans a cut. When every part is done their segments are
joined by packet copy into one output, with continuous timing and the full audio track
encoded once.

Job batches: a jobs file lists (graph, video, audio, output, params) entries; they run
`concurrency` at a time, each failed job is retried `retries` times, and a failed job never
stops the others. A summary (and a JSON report) says how each went.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
import threading
import time

import yaml

from lipgraph.graph.spec import GraphError, load_graph
from lipgraph.launch import make_runner
from lipgraph.media.segments import Manifest, remove_work_dir

from . import job
from .errors import Interrupted, format_error, interrupted_error
from .report import RunOptions
from .session import install_signals, restore_signals


def _connect(runner: str, address: str | None):
    """Ray, connected once before the runs' threads start (None for the other runners)."""
    if runner != "ray":
        return None
    from .ray_runner import init_ray
    return init_ray(address)


def _one(graph, role: str):
    specs = job.with_role(graph, role)
    if len(specs) != 1:
        raise GraphError([f"{graph.path}: a split job needs exactly one {role} stage"])
    return specs[0]


def part_ranges(total: int, parts: int, keyframes=()) -> list[tuple[int, int]]:
    """Contiguous [start, stop) frame ranges, about equal, each cut moved to the nearest
    keyframe within a quarter of a part's length. Encoders put keyframes at scene cuts, so
    parts tend to begin at a cut, and a part's decoder starts on a keyframe."""
    parts = max(1, min(parts, total))
    cuts = [round(total * k / parts) for k in range(parts + 1)]
    slack = total / parts / 4
    for k in range(1, parts):
        near = [f for f in keyframes if abs(f - cuts[k]) <= slack and cuts[k - 1] < f < total]
        if near:
            cuts[k] = min(near, key=lambda f: (abs(f - cuts[k]), f))
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def auto_parts(runner: str, address: str | None) -> int:
    """`--parallel auto`: one part per GPU (of the Ray cluster, or of this machine)."""
    ray = _connect(runner, address)
    if ray is not None:
        return max(1, int(ray.cluster_resources().get("GPU", 0)))
    import torch
    return max(1, torch.cuda.device_count() if torch.cuda.is_available() else 1)


@dataclasses.dataclass
class SplitResult:
    ok: bool
    parts: list
    wall_s: float
    error: str | None = None
    exit_code: int = 0          # run_graph's exit status (1 failed, 128+N stopped by signal N)


def run_split(graph, parts: int, runner: str = "ray", address: str | None = None,
              options: RunOptions | None = None, stream=None) -> SplitResult:
    """Run `graph` (validated, its sink writing segments) as `parts` pipelines side by side."""
    stream = stream or sys.stderr
    options = options or RunOptions()
    _connect(runner, address)
    source, sink = _one(graph, job.SOURCE), _one(graph, job.SINK)
    plan = job.prepare(graph, resume=False)
    total, keys = source.cls.frames(source.params)
    ranges = part_ranges(total, parts, keys)
    t0 = time.monotonic()
    results: list = [None] * len(ranges)
    manifests, runners = [], []
    for k, (a, b) in enumerate(ranges):
        part = copy.deepcopy(graph)
        folder = os.path.join(plan.workdir, f"part-{k:03d}")
        manifests.append(Manifest.create(folder, plan.manifest.data, start=a))
        part.stages[source.name].params.update(source.cls.seek(a, b))
        part.stages[sink.name].params.update(sink.cls.segments_in(folder, join=False))
        profile = f"{options.profile_path}.part-{k}.json" if options.profile_path else None
        opts = dataclasses.replace(options, progress=False, table=False, profile_path=profile,
                                   trace_path=None)
        runners.append(make_runner(part, opts, runner, address))

    def work(k: int) -> None:
        results[k] = runners[k].run()
        if not results[k].ok:           # one part failed: the others stop too
            for other in runners:
                if other is not runners[k]:
                    other.cancel(f"stopped: part {k} failed")
    threads = [threading.Thread(target=work, args=(k,), name=f"part-{k}", daemon=True)
               for k in range(len(ranges))]
    stream.write(f"{graph.name}: {total} frames in {len(ranges)} parts "
                 f"({', '.join(f'{a}..{b - 1}' for a, b in ranges)}) on the {runner} runner\n")
    # SIGTERM (like Ctrl-C) raises here, in the main thread: the parts are stopped and
    # cleaned up by their runners, and the join removes its temporary file
    old_handlers = install_signals()
    try:
        for t in threads:
            t.start()
        for k, t in enumerate(threads):
            t.join()
            r = results[k]
            stream.write(f"  part {k}: {r.status} ({r.profile['items_done']} frames, "
                         f"{r.profile['wall_s']:.1f} s)\n")
        # the part that failed first, not the parts it stopped
        failed = sorted((r for r in results if not r.ok),
                        key=lambda r: (r.error or {}).get("kind") == "cancelled")
        error, code = (format_error(failed[0].error), 1) if failed else (None, 0)
        if not failed:
            sink.cls.join_parts(sink.params, Manifest.combined([Manifest.load(m.folder) for m in manifests]))
    except (KeyboardInterrupt, Interrupted) as exc:
        _, stopped, code = interrupted_error(exc)
        error = stopped["message"]
        for part_runner in runners:
            part_runner.cancel(error)
        for t in threads:
            if t.is_alive():
                t.join()
    finally:
        restore_signals(old_handlers)
    remove_work_dir(plan.workdir)
    return SplitResult(error is None, results, time.monotonic() - t0, error, code)


# ----- batches of jobs ---------------------------------------------------------------------
@dataclasses.dataclass
class JobSpec:
    name: str
    graph: str
    args: dict
    sets: list


def read_jobs(path: str, default_graph: str | None = None) -> list[JobSpec]:
    """A jobs file: `jobs:` (a list) and optional `defaults:`. Each job names its `graph`
    (or takes the default), its graph shortcuts (video, audio, output, weights ...) and a
    `set:` list of stage.param=value."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if isinstance(raw, list):
        raw = {"jobs": raw}
    defaults = raw.get("defaults") or {}
    specs = []
    for i, entry in enumerate(raw.get("jobs") or []):
        merged = {**defaults, **(entry or {})}
        sets = list(defaults.get("set") or []) + list((entry or {}).get("set") or [])
        graph = merged.pop("graph", None) or default_graph
        name = str(merged.pop("name", None) or os.path.basename(str(merged.get("output", f"job-{i}"))))
        merged.pop("set", None)
        if not graph:
            raise GraphError([f"{path}: job {i} names no graph (and no default graph was given)"])
        if "output" not in merged:
            raise GraphError([f"{path}: job {i} has no output"])
        specs.append(JobSpec(name, graph, {k: str(v) for k, v in merged.items()}, sets))
    if not specs:
        raise GraphError([f"{path}: no jobs"])
    return specs


def run_jobs(specs: list[JobSpec], runner: str = "ray", address: str | None = None,
             retries: int = 1, concurrency: int = 2, stream=None,
             stall_timeout_s: float = 300.0, check=None) -> list[dict]:
    """Run every job (up to `concurrency` at once), retrying failures; one job's failure
    never stops another. `check(graph)` raises on a job that cannot start (the stages'
    preflight). Returns one status record per job, in order."""
    stream = stream or sys.stderr
    _connect(runner, address)
    status = [{"job": s.name, "output": s.args.get("output"), "status": "pending", "attempts": 0,
               "wall_s": 0.0, "error": None} for s in specs]
    lock = threading.Lock()
    slots = threading.Semaphore(max(1, concurrency))

    def attempt(k: int) -> None:
        spec, rec = specs[k], status[k]
        with slots:
            while rec["attempts"] <= retries:
                rec["attempts"] += 1
                t = time.monotonic()
                try:
                    graph = load_graph(spec.graph, spec.sets, shortcuts=spec.args)
                    if check is not None:
                        check(graph)
                    if job.resumable(graph):
                        job.prepare(graph, resume=False)
                    out = graph.output_path()
                    result = make_runner(graph, RunOptions(
                        progress=False, table=False, profile_path=out + ".profile.json",
                        stall_timeout_s=stall_timeout_s), runner, address).run()
                    ok, err = result.ok, (None if result.ok else format_error(result.error))
                except Exception as exc:                    # bad job entry, missing inputs ...
                    ok, err = False, f"{type(exc).__name__}: {exc}"
                rec["wall_s"] += time.monotonic() - t
                rec["status"], rec["error"] = ("ok", None) if ok else ("failed", err)
                with lock:
                    head = (err or "").splitlines()[0] if err else ""
                    stream.write(f"  job {spec.name}: {rec['status']} (attempt {rec['attempts']})"
                                 + (f": {head}" if head else "") + "\n")
                if ok:
                    return

    threads = [threading.Thread(target=attempt, args=(k,), daemon=True) for k in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return status


def format_jobs(status: list[dict]) -> str:
    rows = [["job", "status", "tries", "wall s", "error"]]
    for r in status:
        err = (r["error"] or "").splitlines()[0][:70] if r["error"] else ""
        rows.append([r["job"], r["status"], str(r["attempts"]), f"{r['wall_s']:.1f}", err])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    ok = sum(r["status"] == "ok" for r in status)
    return "\n".join(lines + [f"{ok}/{len(status)} jobs ok"])
