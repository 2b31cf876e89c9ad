"""The two runs of an A/B comparison: their output paths and --set lines, each run in a
subprocess, and what a run leaves beside its output (per-frame sidecar, profile)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Sequence


@dataclass
class Run:
    label: str                       # "A" or "B"
    name: str
    graph: str
    sets: list[str]
    output: str
    sidecar: str | None              # None: the graph's sink writes no sidecar
    profile: str
    log: str
    exit_code: int | None = None
    wall_s: float | None = None
    error: str | None = None


def _graph_facts(path: str) -> tuple:
    """(outline, output stage, its params) of a graph file, without validating it: the run
    itself validates, with the real arguments."""
    import lipgraph.stages  # noqa: F401  (the pipeline's stage types register themselves)
    from lipgraph.graph.registry import UnknownStageType, resolve
    from lipgraph.graph.spec import GraphError, read_outline
    try:
        outline = read_outline(path)
    except GraphError as exc:
        raise SystemExit(f"ab_compare: cannot read graph {path}: {'; '.join(exc.problems)}") from None
    for needed in ("video", "audio", "output"):
        if needed not in outline.shortcuts:
            raise SystemExit(f"ab_compare: {path}: the graph has no --{needed} argument (args: section)")
    sink = outline.output_stage
    try:
        params = set(resolve(str(outline.stage_types.get(sink))).params)
    except UnknownStageType as exc:
        raise SystemExit(f"ab_compare: {path}: stage {sink!r}: {exc}") from None
    return outline, sink, params


def plan_runs(graphs: Sequence[str], out_dir: str, sets_common: Sequence[str],
              sets_each: Sequence[Sequence[str]], lossless: bool, weights: str | None = None) -> list[Run]:
    """Output paths and --set lines of both runs (names from the graphs, made distinct)."""
    facts = [_graph_facts(path) for path in graphs]
    for path, (outline, _, _) in zip(graphs, facts):
        if weights and "weights" not in outline.shortcuts:
            raise SystemExit(f"ab_compare: {path}: the graph has no --weights argument; "
                             "point its stages at weights with --set-a / --set-b instead")
    names = [f[0].name for f in facts]
    if names[0] == names[1]:
        names = [f"{names[0]}_a", f"{names[1]}_b"]
    runs = []
    for label, (outline, sink, params), name, own in zip("AB", facts, names, sets_each):
        output = os.path.join(out_dir, name + (".mkv" if lossless else ".mp4"))
        sets = list(sets_common) + list(own)
        if lossless:
            sets += [f"{sink}.codec=ffv1", f"{sink}.pix_fmt=bgr0"]
        sidecar = None
        if "sidecar" in params:
            sidecar = output + ".frames.jsonl"
            sets.append(f"{sink}.sidecar={sidecar}")
        runs.append(Run(label, name, os.path.abspath(outline.path), sets, output, sidecar,
                        output + ".profile.json", os.path.join(out_dir, name + ".log")))
    return runs


def execute(run: Run, video: str, audio: str, weights: str | None, runner: str, cancel=None) -> None:
    """Run one graph in a subprocess; its stdout and stderr go to `run.log`. `cancel` (a
    threading.Event): once set, the run is interrupted as Ctrl-C would (it cleans up after
    itself) and `lipgraph.api.Cancelled` is raised."""
    from .synthetic import graph_command
    cmd = graph_command(run.graph, video, audio, run.output, run.sets, "--runner", runner,
                        *(["--weights", weights] if weights else []))
    for stale in (run.output, run.profile, run.sidecar):
        if stale and os.path.exists(stale):
            os.remove(stale)
    t0 = time.perf_counter()
    with open(run.log, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while cancel is not None and proc.poll() is None:
            if cancel.wait(0.2):
                _interrupt(proc)
                from lipgraph.api import Cancelled
                raise Cancelled(f"{run.label} ({run.name}) cancelled", exit_code=130)
        run.exit_code = proc.wait()
    run.wall_s = round(time.perf_counter() - t0, 3)
    if run.exit_code != 0:
        with open(run.log, encoding="utf-8", errors="replace") as f:
            tail = f.read().splitlines()[-15:]
        run.error = f"run_graph.py exited with status {run.exit_code}:\n" + "\n".join(tail)


def _interrupt(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_sidecar(path: str) -> list[dict] | None:
    """The per-frame JSON lines a mux sidecar holds; None when there is no file."""
    if not path or not os.path.isfile(path):
        return None
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not a JSON line ({exc})") from None
    return rows


def faces_of(row: dict) -> list[dict]:
    """The faces dubbed on a sidecar row, first face first, each {key, id, face, edit, model,
    restore}: its `faces` list where several were dubbed, else its top-level fields (no face
    on a cutaway). `key` names the face across rows: its track id, or its place on the row
    ("#1", "#2", ...) where the sidecar gives no id."""
    faces = row.get("faces")
    if not faces:
        if row.get("face") is None:
            return []
        faces = [{"id": row.get("face_id"), "face": row["face"], "edit": row.get("edit"),
                  "model": row.get("model"), "restore": row.get("restore")}]
    return [dict(f, key=str(f["id"]) if f.get("id") is not None else f"#{n}") for n, f in enumerate(faces, 1)]


def profile_figures(profile: dict) -> dict:
    """Per-stage throughput and the bottleneck; fallback counters with their reasons."""
    stages = {}
    fallbacks: dict[str, dict] = {}
    total = 0
    for name, s in profile.get("stages", {}).items():
        stages[name] = {"type": s.get("type"), "workers": s.get("workers"), "items_in": s.get("items_in"),
                        "items_out": s.get("items_out"), "items_per_s": s.get("throughput_ips"),
                        "capacity_per_s": s.get("capacity_ips"), "busy_s": s.get("busy_s"),
                        "utilization": s.get("utilization"), "mean_batch": s.get("mean_batch"),
                        "setup_s": s.get("setup_s")}
        counters, reasons = s.get("counters") or {}, s.get("reasons") or {}
        keys = [k for k in counters if "fallback" in k] + [k for k in reasons if "fallback" not in k]
        for key in dict.fromkeys(keys):
            entry = {"count": counters.get(key, sum((reasons.get(key) or {}).values())),
                     "reasons": dict(reasons.get(key) or {})}
            fallbacks.setdefault(name, {})[key] = entry
            if "fallback" in key and key.endswith("frames"):
                total += entry["count"]
    frames = profile.get("items_done")
    wall = profile.get("stream_wall_s") or 0
    return {
        "throughput": {"status": profile.get("status"), "runner": profile.get("runner"),
                       "wall_s": profile.get("wall_s"), "stream_wall_s": profile.get("stream_wall_s"),
                       "frames": frames, "frames_per_s": round(frames / wall, 3) if frames and wall else None,
                       "bottleneck": profile.get("bottleneck"), "stages": stages,
                       "peak_rss_bytes": profile.get("peak_rss_total_bytes"),
                       "cuda_peak_bytes": profile.get("cuda_peak_bytes")},
        "fallbacks": {"frames": total, "by_stage": fallbacks},
        "notes": [" ".join(str(x) for x in n) if isinstance(n, (list, tuple)) else str(n)
                  for n in profile.get("notes") or []],
    }
