"""Validation: a graph document (as read from YAML) to a `GraphSpec`, every problem reported
at once, each line naming the file, line, stage and field.

The sections are read in order (top level, groups, stages, args, overrides, binds, edges);
`check_graph` then runs every check that needs the whole wired graph.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from .fields import check_fields
from .loader import graph_name, line_getter
from .model import DEFAULT_QUEUE_SIZE, EdgeSpec, GraphError, GraphSpec, GroupSpec, Problems, StageSpec, toposort
from .overrides import Override, apply_overrides
from .shortcuts import check_shortcuts, shortcut_overrides
from .validate_edges import Port, check_wiring, read_edges
from .validate_stages import bind_stages, read_stages

_TOP_KEYS = {"name", "description", "queue_size", "groups", "args", "stages", "edges"}
_GROUP_KEYS = {"gpus", "cpus", "resources"}


def build_graph(raw: Any, path: str = "<graph>", overrides: Iterable[Override] = (),
                shortcuts: dict | None = None) -> GraphSpec:
    """Validate a graph document. `shortcuts` gives values to its `args:` shortcuts
    (``{"video": "in.mp4"}``); they apply before `overrides`, so an explicit override wins."""
    if not isinstance(raw, dict):
        raise GraphError([f"{path}: expected a mapping with 'stages' and 'edges'"])
    problems = Problems(path)
    default_q = _read_top(raw, problems)
    group_decl, group_line = _read_groups(raw, problems)
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        problems.add(line_getter(raw)("stages"), None, "stages",
                     "expected a non-empty mapping of stage name -> definition")
        stages_raw = {}
    stages = read_stages(stages_raw, problems)
    args = check_shortcuts(raw, stages, problems)
    given = shortcut_overrides(raw, args, shortcuts or {}, problems)
    apply_overrides(stages, given + list(overrides), problems)
    notes = bind_stages(stages, problems)
    edges_raw = raw.get("edges") or []
    if not isinstance(edges_raw, list):
        problems.add(line_getter(raw)("edges"), None, "edges", "expected a list")
        edges_raw = []
    edges, excused = read_edges(edges_raw, stages, stages_raw, default_q, problems)
    groups = check_graph(stages, edges, excused, group_decl, group_line, problems)
    if not problems:    # fields need a sound graph: every field read is written upstream
        problems += check_fields(stages, edges, path)
    problems.raise_any()
    return GraphSpec(graph_name(raw, path), path, stages, edges, groups, args, default_q, notes)


def _read_top(raw: dict, problems: Problems) -> int:
    """Check the top-level keys; the default queue size."""
    lines = line_getter(raw)
    for key in raw:
        if key not in _TOP_KEYS:
            problems.add(lines(key), None, key, f"unknown top-level key (known: {', '.join(sorted(_TOP_KEYS))})")
    return problems.count(raw.get("queue_size", DEFAULT_QUEUE_SIZE), DEFAULT_QUEUE_SIZE,
                          lines("queue_size"), None, "queue_size")


def _read_groups(raw: dict, problems: Problems) -> tuple[dict[str, dict], Callable]:
    """The `groups:` section (resources per group), and the line of each group."""
    groups_raw = raw.get("groups") or {}
    if not isinstance(groups_raw, dict):
        problems.add(line_getter(raw)("groups"), None, "groups", "expected a mapping of group name -> resources")
        groups_raw = {}
    line = line_getter(groups_raw)
    decl: dict[str, dict] = {}
    for gname, gval in groups_raw.items():
        gval = gval or {}
        if not isinstance(gval, dict):
            problems.add(line(gname), None, f"groups.{gname}", "expected a mapping (gpus, cpus, resources)")
            continue
        for k in gval:
            if k not in _GROUP_KEYS:
                problems.add(line(gname), None, f"groups.{gname}.{k}",
                             f"unknown key (known: {', '.join(sorted(_GROUP_KEYS))})")
        decl[gname] = dict(gval)
    return decl, line


def check_graph(stages: dict[str, StageSpec], edges: list[EdgeSpec], excused: set[Port],
                group_decl: dict[str, dict], group_line: Callable, problems: Problems) -> dict[str, GroupSpec]:
    """The checks of the whole wired graph (ports, cycles, placement); the placement groups."""
    check_wiring(stages, edges, excused, problems)
    if stages:
        _, cycle = toposort(stages, edges)
        if cycle:
            problems.add(None, cycle[0], None, "cycle: " + " -> ".join(cycle))
    return _place(stages, edges, group_decl, group_line, problems)


def _place(stages: dict[str, StageSpec], edges: list[EdgeSpec], group_decl: dict[str, dict],
           group_line: Callable, problems: Problems) -> dict[str, GroupSpec]:
    """Stages into placement groups, with the groups' declared resources."""
    groups: dict[str, GroupSpec] = {}
    for spec in stages.values():
        groups.setdefault(spec.group, GroupSpec(spec.group, [])).stages.append(spec.name)
    for gname in group_decl:
        if gname not in groups:
            problems.add(group_line(gname), None, f"groups.{gname}", "group declared but no stage is placed in it")
    for g in groups.values():
        decl = group_decl.get(g.name, {})
        g.gpus, g.cpus = decl.get("gpus"), decl.get("cpus")
        g.resources = dict(decl.get("resources") or {})
        _check_cuda(g, stages, problems)
        _check_replicas(g, stages, problems)
    for e in edges:
        if stages[e.src].workers > 1 and stages[e.dst].workers > 1:
            problems.add(e.line, e.dst, "workers",
                         f"replicated stages '{e.src}' and '{e.dst}' are directly connected; "
                         "put them in one stage or place an unreplicated stage between")
    return groups


def _check_cuda(g: GroupSpec, stages: dict[str, StageSpec], problems: Problems) -> None:
    """One group shares one CUDA context: one device, and a GPU to run on."""
    cuda_stages = [s for s in g.stages if stages[s].uses_cuda]
    g.cuda = bool(cuda_stages)
    if not cuda_stages:
        return
    first = stages[cuda_stages[0]]
    devices = {str(stages[s].params.get("device")) for s in cuda_stages}
    if len(devices) > 1:
        problems.add(first.line, first.name, "group",
                     f"group '{g.name}' mixes CUDA devices {sorted(devices)}: one group shares one CUDA context")
    if g.gpus is not None and g.gpus == 0:
        problems.add(first.line, first.name, "group", f"stage uses CUDA but its group '{g.name}' declares gpus: 0")


def _check_replicas(g: GroupSpec, stages: dict[str, StageSpec], problems: Problems) -> None:
    """A replicated stage (workers > 1) is a stateless, CPU, non-source stage alone in its group."""
    for s in [s for s in g.stages if stages[s].workers > 1]:
        spec = stages[s]
        if len(g.stages) > 1:
            problems.add(spec.line, s, "workers",
                         f"a replicated stage needs a group of its own; group '{g.name}' also holds "
                         f"{', '.join(x for x in g.stages if x != s)}")
        if not spec.cls.stateless:
            problems.add(spec.line, s, "workers",
                         f"stage type '{spec.type}' keeps state across items and cannot be replicated")
        if spec.uses_cuda:
            problems.add(spec.line, s, "workers", "CUDA stages cannot be replicated (one CUDA process per GPU)")
        if not spec.ports[0]:
            problems.add(spec.line, s, "workers", "sources cannot be replicated")
        g.workers = spec.workers
