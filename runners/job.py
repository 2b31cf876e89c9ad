"""Resumable jobs: the link between a graph run and its segmented output's manifest.

A run whose sink writes segments records, in the manifest beside the output, what it is
computing: the identity of each input file (size and hashes of its first and last MiB) and a
digest of the graph (every stage's type and params, and the edges). `--resume` checks both
against the files and graph given now, refuses with what changed if anything did, and
otherwise starts the sources at the first frame no completed segment holds.

The engine knows the stages involved only by the roles they declare (`Stage.roles`), each a
few class methods that take or return params:

- `segmented_sink` (one per graph): `job_output(params)`, the output file when it is written
  in segments, else None; `segments_in(workdir, join=True)`, the params that write them into
  `workdir`; `join_parts(params, manifest)`, joining a split job's parts into the output;
- `seekable_source`: `seek(start, stop=None)`, the params that make the output begin at
  frame `start` (and end before `stop`); `frames(params)`, the output's frame count and the
  frames where a split job prefers to cut.

Params in a stage's `placement_params` stay out of the digest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from lipgraph.media.identity import file_identity, same_content
from lipgraph.media.segments import Manifest, remove_work_dir, work_dir

SINK, SOURCE = "segmented_sink", "seekable_source"


class ResumeRefused(Exception):
    """The job cannot start or continue as asked (missing inputs, changed inputs or graph)."""


@dataclasses.dataclass
class JobPlan:
    workdir: str
    start: int
    notes: list[str]
    manifest: Manifest          # the job's record, as saved in workdir


def graph_params(graph) -> dict:
    """What the digest covers, readable (to say what changed)."""
    out = {}
    for name in graph.topo_order():
        spec = graph.stages[name]
        skip = spec.cls.placement_params
        out[name] = {"type": spec.type, "workers": spec.workers,
                     **{k: v for k, v in sorted(spec.params.items()) if k not in skip}}
    out["(edges)"] = sorted(e.name for e in graph.edges)
    return out


def digest(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def _inputs(graph) -> dict:
    """Input files: the `path` of every source stage (the video, the audio)."""
    found = {}
    for name, spec in graph.stages.items():
        if not spec.ports[0] and spec.params.get("path"):
            found[name] = spec.params["path"]
    return found


def with_role(graph, role: str) -> list:
    return [s for s in graph.stages.values() if role in s.cls.roles]


def _sink(graph):
    sinks = with_role(graph, SINK)
    return sinks[0] if len(sinks) == 1 else None


def resumable(graph) -> bool:
    sink = _sink(graph)
    return sink is not None and bool(sink.cls.job_output(sink.params))


def prepare(graph, resume: bool) -> JobPlan:
    """Create (or, resuming, check and continue) the job of this run; set the params that
    make the sources start at the first unfinished frame and the sink write segments."""
    sink = _sink(graph)
    output = sink.cls.job_output(sink.params)
    folder = work_dir(output)
    paths = _inputs(graph)
    missing = [f"stage '{name}': input file not found: {path}"
               for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise ResumeRefused("\n".join(missing))
    inputs = {name: file_identity(path) for name, path in paths.items()}
    params = graph_params(graph)
    job = {"output": os.path.abspath(output), "inputs": inputs,
           "graph": graph.name, "digest": digest(params), "params": params}
    notes: list[str] = []
    start = 0
    manifest = None
    if resume:
        manifest = Manifest.load(folder)
        if manifest is None:
            notes.append(f"nothing to resume for {job['output']}: starting from the beginning")
        else:
            _check_same(manifest.data, job)
            bad = manifest.check_files()
            if bad:
                keep = next(i for i, s in enumerate(manifest.segments)
                            if any(s["file"] in b for b in bad))
                notes.append(f"segment files damaged ({'; '.join(bad)}): redoing from segment {keep}")
                del manifest.segments[keep:]
                manifest.save()
            manifest.remove_strays()
            start = manifest.next_frame()
            if start:
                notes.append(f"resuming {job['output']} at frame {start} "
                             f"({len(manifest.segments)} segment(s) done)")
    elif os.path.isdir(folder):
        notes.append(f"discarded the segments of an unfinished earlier run of {job['output']} "
                     "(use --resume to continue such a run)")
        remove_work_dir(folder)
    if manifest is None:
        manifest = Manifest.create(folder, job)
    for spec in with_role(graph, SOURCE):
        spec.params.update(spec.cls.seek(start))
    sink.params.update(sink.cls.segments_in(folder))
    return JobPlan(folder, start, notes, manifest)


def _check_same(old: dict, new: dict) -> None:
    changed = []
    for name, ident in new["inputs"].items():
        before = old.get("inputs", {}).get(name)
        if before is None:
            changed.append(f"input of stage '{name}' is new")
        elif not same_content(before, ident):
            changed.append(f"input of stage '{name}' changed ({ident['path']}: "
                           f"{before['size']} -> {ident['size']} bytes or different content)")
    if old.get("digest") != new["digest"]:
        a, b = old.get("params", {}), new["params"]
        for stage in sorted(set(a) | set(b)):
            if stage not in a or stage not in b:
                changed.append(f"stage '{stage}' {'added' if stage in b else 'removed'}")
                continue
            pa, pb = ({"edges": p} if not isinstance(p, dict) else p for p in (a[stage], b[stage]))
            changed += [f"{stage}.{k}: {pa.get(k)!r} -> {pb.get(k)!r}"
                        for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    if changed:
        raise ResumeRefused("cannot resume: the job changed since it was started:\n  "
                            + "\n  ".join(changed)
                            + "\nrun without --resume to start over")
