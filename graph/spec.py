"""Graph files: loading, validation and the validated graph model.

A graph file (YAML) looks like::

    name: example
    queue_size: 8                 # default capacity of every edge
    groups:                       # optional: resources of placement groups
      gpu: {gpus: 1}
    args:                         # optional command-line shortcuts: --output X sets sink.path
      output: sink.path           # (or a list: every listed param gets the value)
    stages:
      src:  {type: synthetic_source, group: io, params: {count: 100}}
      work: {type: synthetic_map, group: cpu, workers: 2}
      sink: {type: synthetic_sink, group: io}
    edges:
      - src.out -> work.in
      - {from: work.out, to: sink.in, queue_size: 16}

Every problem found is reported at once, each line naming the file, line, stage and field.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

import yaml

from .builtin import builtin_names, find_graph_file, is_path
from .registry import UnknownStageType, resolve
from .stage import Stage

DEFAULT_QUEUE_SIZE = 8
_TOP_KEYS = {"name", "description", "queue_size", "groups", "args", "stages", "edges"}
_STAGE_KEYS = {"type", "group", "params", "workers"}
_EDGE_KEYS = {"from", "to", "queue_size"}
_GROUP_KEYS = {"gpus", "cpus", "resources"}


class GraphError(ValueError):
    """One or more problems in a graph file; `problems` holds each formatted line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid graph:\n  " + "\n  ".join(problems))


# ----- YAML with line numbers -----------------------------------------------------------
class _LineDict(dict):
    lines: dict

    def line_of(self, key: Any) -> int | None:
        return getattr(self, "lines", {}).get(key)


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    mapping = _LineDict(loader.construct_mapping(node, deep=True))
    mapping.lines = {loader.construct_object(k, deep=True): k.start_mark.line + 1
                     for k, _ in node.value}
    mapping.lines["__self__"] = node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _LineList(list):
    lines: list


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _LineList:
    seq = _LineList(loader.construct_sequence(node, deep=True))
    seq.lines = [child.start_mark.line + 1 for child in node.value]
    return seq


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


# ----- the validated model --------------------------------------------------------------
@dataclasses.dataclass
class StageSpec:
    name: str
    type: str
    cls: type[Stage]
    params: dict
    group: str
    workers: int = 1
    line: int | None = None
    declared: dict | None = None   # params as written (file and --set), before bind hooks

    @property
    def ports(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.cls.ports(self.params)

    @property
    def uses_cuda(self) -> bool:
        return self.cls.uses_cuda(self.params)


@dataclasses.dataclass
class EdgeSpec:
    src: str
    src_port: str
    dst: str
    dst_port: str
    queue_size: int
    line: int | None = None

    @property
    def name(self) -> str:
        return f"{self.src}.{self.src_port}->{self.dst}.{self.dst_port}"


@dataclasses.dataclass
class GroupSpec:
    name: str
    stages: list[str]
    gpus: float | None = None
    cpus: float | None = None
    resources: dict = dataclasses.field(default_factory=dict)
    cuda: bool = False
    workers: int = 1          # replicas: only a group holding one stateless stage has > 1


@dataclasses.dataclass
class GraphSpec:
    name: str
    path: str
    stages: dict[str, StageSpec]
    edges: list[EdgeSpec]
    groups: dict[str, GroupSpec]
    args: dict[str, list[str]]     # command-line shortcut -> the stage.param names it sets
    queue_size: int = DEFAULT_QUEUE_SIZE
    notes: list[str] = dataclasses.field(default_factory=list)   # choices made while binding

    def edges_from(self, stage: str) -> list[EdgeSpec]:
        return [e for e in self.edges if e.src == stage]

    def topo_order(self) -> list[str]:
        order, _ = _toposort(self.stages, self.edges)
        return order

    def sources(self) -> list[str]:
        return [n for n, s in self.stages.items() if not s.ports[0]]

    def sinks(self) -> list[str]:
        return [n for n, s in self.stages.items() if not s.ports[1]]

    def is_cross_group(self, edge: EdgeSpec) -> bool:
        return self.stages[edge.src].group != self.stages[edge.dst].group

    def param(self, dotted: str) -> Any:
        stage, _, key = dotted.partition(".")
        return self.stages[stage].params.get(key)


def _toposort(stages: dict, edges: list[EdgeSpec]) -> tuple[list[str], list[str] | None]:
    """Kahn's order (stable in file order); on a cycle, also return one cycle's stages."""
    indeg = {n: 0 for n in stages}
    succ: dict[str, list[str]] = {n: [] for n in stages}
    for e in edges:
        if e.src in stages and e.dst in stages:
            indeg[e.dst] += 1
            succ[e.src].append(e.dst)
    ready = [n for n in stages if indeg[n] == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    if len(order) == len(stages):
        return order, None
    # find a cycle among the remaining stages by walking successors
    left = {n for n in stages if n not in order}
    while True:   # drop stages downstream of the cycle: every one left then has a successor
        tails = {n for n in left if not any(m in left for m in succ[n])}
        if not tails:
            break
        left -= tails
    start = next(iter(left))
    path, seen = [start], {start: 0}
    while True:
        nxt = next(m for m in succ[path[-1]] if m in left)
        if nxt in seen:
            return order, path[seen[nxt]:] + [nxt]
        seen[nxt] = len(path)
        path.append(nxt)


# ----- parsing helpers -----------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A command-line value as YAML: '3' -> 3, 'true' -> True, 'a' -> 'a'."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _check_type(default: Any, value: Any) -> tuple[bool, Any]:
    """Whether `value` fits the type of `default` (None accepts anything); coerced value."""
    if default is None or value is None:
        return True, value
    if isinstance(default, bool):
        return isinstance(value, bool), value
    if isinstance(default, int):
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if isinstance(default, str):
        # a number where text is expected ("fps: 25", "detect_every: 5") means that text
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)), list(value) if isinstance(value, tuple) else value
    if isinstance(default, dict):
        return isinstance(value, dict), value
    return True, value


def _type_name(default: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "a mapping"}.get(type(default), "a value")


def _parse_endpoint(text: Any) -> tuple[str, str | None] | None:
    if not isinstance(text, str) or not text.strip():
        return None
    stage, dot, port = text.strip().partition(".")
    return stage, (port if dot else None)


class _Text(str):
    """A command-line value not yet read as YAML: string params take it as it is."""


def parse_overrides(sets: Iterable[str]) -> list[tuple[str, str, Any]]:
    """``stage.param=value`` strings to (stage, param, value) triples."""
    out = []
    for s in sets:
        key, eq, value = s.partition("=")
        stage, dot, param = key.partition(".")
        if not eq or not dot or not stage or not param:
            raise GraphError([f"--set {s!r}: expected stage.param=value"])
        out.append((stage.strip(), param.strip(), _Text(value)))
    return out


# ----- loading + validation ------------------------------------------------------------
def shortcut_sets(path: str, values: dict) -> list[str]:
    """``stage.param=value`` strings for the graph file's `args:` shortcuts given values
    (``{"video": "in.mp4", ...}``); unknown shortcut names are an error."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise GraphError([f"{path}: {exc}"]) from None
    args = raw.get("args") or {}
    sets = []
    for name, value in values.items():
        if name not in args:
            raise GraphError([f"{path}: no shortcut '{name}' (args: {', '.join(args) or 'none'})"])
        targets = [args[name]] if isinstance(args[name], str) else list(args[name])
        sets += [f"{t}={value}" for t in targets]
    return sets


def load_graph(path: str, overrides: Iterable[str] | dict = ()) -> GraphSpec:
    """Load and validate a graph file (or a built-in graph by name); `overrides` are ``stage.param=value`` strings or a
    ``{"stage.param": value}`` mapping applied on top of the file's params."""
    path = find_graph_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        hint = "" if is_path(path) else f" (built-in graphs: {', '.join(builtin_names())})"
        raise GraphError([f"{path}: no such graph file{hint}"]) from None
    except yaml.YAMLError as exc:
        raise GraphError([f"{path}: not valid YAML: {exc}"]) from None
    if isinstance(overrides, dict):
        triples = []
        for k, v in overrides.items():
            stage, _, param = k.partition(".")
            triples.append((stage, param, v))
    else:
        triples = parse_overrides(overrides)
    return build_graph(raw, path, triples)


def build_graph(raw: Any, path: str = "<graph>", overrides: list[tuple[str, str, Any]] = ()
                ) -> GraphSpec:
    problems: list[str] = []
    fname = os.path.basename(path) if path else "<graph>"

    def where(line: int | None) -> str:
        return f"{path}:{line}" if line else path

    def problem(line, stage, field, msg):
        parts = [where(line)]
        if stage:
            parts.append(f"stage '{stage}'")
        if field:
            parts.append(f"field '{field}'")
        problems.append(": ".join(parts) + ": " + msg)

    if not isinstance(raw, dict):
        raise GraphError([f"{path}: expected a mapping with 'stages' and 'edges'"])
    lines = raw.line_of if isinstance(raw, _LineDict) else (lambda k: None)
    for key in raw:
        if key not in _TOP_KEYS:
            problem(lines(key), None, key, f"unknown top-level key (known: {', '.join(sorted(_TOP_KEYS))})")

    default_q = raw.get("queue_size", DEFAULT_QUEUE_SIZE)
    if not isinstance(default_q, int) or isinstance(default_q, bool) or default_q < 1:
        problem(lines("queue_size"), None, "queue_size", f"must be an integer >= 1, got {default_q!r}")
        default_q = DEFAULT_QUEUE_SIZE

    # --- groups declared with resources
    groups_raw = raw.get("groups") or {}
    group_decl: dict[str, dict] = {}
    if not isinstance(groups_raw, dict):
        problem(lines("groups"), None, "groups", "expected a mapping of group name -> resources")
        groups_raw = {}
    for gname, gval in groups_raw.items():
        gval = gval or {}
        gl = groups_raw.line_of(gname) if isinstance(groups_raw, _LineDict) else None
        if not isinstance(gval, dict):
            problem(gl, None, f"groups.{gname}", "expected a mapping (gpus, cpus, resources)")
            continue
        for k in gval:
            if k not in _GROUP_KEYS:
                problem(gl, None, f"groups.{gname}.{k}", f"unknown key (known: {', '.join(sorted(_GROUP_KEYS))})")
        group_decl[gname] = dict(gval)

    # --- stages
    stages_raw = raw.get("stages")
    stages: dict[str, StageSpec] = {}
    if not isinstance(stages_raw, dict) or not stages_raw:
        problem(lines("stages"), None, "stages", "expected a non-empty mapping of stage name -> definition")
        stages_raw = {}
    for sname, sval in stages_raw.items():
        sl = stages_raw.line_of(sname) if isinstance(stages_raw, _LineDict) else None
        if not isinstance(sname, str) or not sname.isidentifier():
            problem(sl, str(sname), None, "stage names must be identifiers (letters, digits, _)")
            continue
        if not isinstance(sval, dict):
            problem(sl, sname, None, "expected a mapping with 'type' (and 'params', 'group', 'workers')")
            continue
        sline = sval.line_of if isinstance(sval, _LineDict) else (lambda k: None)
        for k in sval:
            if k not in _STAGE_KEYS:
                problem(sline(k), sname, k, f"unknown key (known: {', '.join(sorted(_STAGE_KEYS))})")
        tname = sval.get("type")
        if not isinstance(tname, str):
            problem(sline("type") or sl, sname, "type", "missing stage type")
            continue
        try:
            cls = resolve(tname)
        except UnknownStageType as exc:
            problem(sline("type"), sname, "type", str(exc))
            continue
        params_raw = sval.get("params") or {}
        if not isinstance(params_raw, dict):
            problem(sline("params"), sname, "params", "expected a mapping")
            params_raw = {}
        pline = params_raw.line_of if isinstance(params_raw, _LineDict) else (lambda k: None)
        params = dict(cls.params)
        for k, v in params_raw.items():
            if k not in cls.params:
                problem(pline(k), sname, f"params.{k}",
                        f"unknown param for type '{tname}' (known: {', '.join(sorted(cls.params)) or 'none'})")
                continue
            ok, v2 = _check_type(cls.params[k], v)
            if not ok:
                problem(pline(k), sname, f"params.{k}",
                        f"expected {_type_name(cls.params[k])}, got {v!r}")
            params[k] = v2
        workers = sval.get("workers", 1)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            problem(sline("workers"), sname, "workers", f"must be an integer >= 1, got {workers!r}")
            workers = 1
        group = sval.get("group", sname)
        if not isinstance(group, str) or not group:
            problem(sline("group"), sname, "group", "must be a non-empty string")
            group = sname
        stages[sname] = StageSpec(sname, tname, cls, params, group, workers, sl)

    # --- overrides (--set stage.param=value)
    for sname, param, value in overrides:
        if sname not in stages:
            problem(None, sname, param, f"--set names an unknown stage (stages: {', '.join(stages)})")
            continue
        spec = stages[sname]
        if isinstance(value, _Text):   # '--set x.path=007' stays a string for a string param
            default = spec.cls.params.get(param)
            value = str(value) if isinstance(default, str) else parse_value(value)
        if param == "workers":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problem(None, sname, "workers", f"--set: must be an integer >= 1, got {value!r}")
            else:
                spec.workers = value
            continue
        if param not in spec.cls.params:
            problem(None, sname, f"params.{param}",
                    f"--set: unknown param for type '{spec.type}' (known: {', '.join(sorted(spec.cls.params))})")
            continue
        ok, v2 = _check_type(spec.cls.params[param], value)
        if not ok:
            problem(None, sname, f"params.{param}",
                    f"--set: expected {_type_name(spec.cls.params[param])}, got {value!r}")
            continue
        spec.params[param] = v2

    notes: list[str] = []
    for spec in sorted(stages.values(), key=lambda sp: sp.cls.bind_order):
        told: list = []
        spec.declared = dict(spec.params)
        try:
            spec.params = spec.cls.bind(dict(spec.params), stages, told)
        except Exception as exc:   # a bind that cannot decide is a problem of this stage
            problem(spec.line, spec.name, None, f"{type(exc).__name__}: {exc}")
        notes += [f"{spec.name}: {msg}" for _, msg in told]
    for spec in stages.values():
        for param, msg in spec.cls.validate_params(spec.params):
            problem(spec.line, spec.name, f"params.{param}", msg)

    # --- edges
    edges_raw = raw.get("edges") or []
    edges: list[EdgeSpec] = []
    if not isinstance(edges_raw, list):
        problem(lines("edges"), None, "edges", "expected a list")
        edges_raw = []
    elines = getattr(edges_raw, "lines", [None] * len(edges_raw))
    excused: set[tuple[str, str]] = set()
    for i, e in enumerate(edges_raw):
        el = elines[i] if i < len(elines) else None
        q = default_q
        if isinstance(e, str):
            src_txt, arrow, dst_txt = e.partition("->")
            if not arrow:
                problem(el, None, f"edges[{i}]", f"expected 'stage.port -> stage.port', got {e!r}")
                continue
        elif isinstance(e, dict):
            for k in e:
                if k not in _EDGE_KEYS:
                    problem(el, None, f"edges[{i}].{k}", f"unknown key (known: {', '.join(sorted(_EDGE_KEYS))})")
            src_txt, dst_txt = e.get("from"), e.get("to")
            q = e.get("queue_size", default_q)
        else:
            problem(el, None, f"edges[{i}]", f"expected a string or a mapping, got {e!r}")
            continue
        if not isinstance(q, int) or isinstance(q, bool) or q < 1:
            problem(el, None, f"edges[{i}].queue_size", f"must be an integer >= 1, got {q!r}")
            q = default_q
        ends = []
        for role, txt in (("from", src_txt), ("to", dst_txt)):
            parsed = _parse_endpoint(txt)
            if parsed is None:
                problem(el, None, f"edges[{i}].{role}", f"expected 'stage.port', got {txt!r}")
                ends.append(None)
                continue
            sname, port = parsed
            if sname not in stages:
                if sname in stages_raw:
                    ends.append(None)  # that stage already has its own error
                else:
                    problem(el, sname, f"edges[{i}].{role}",
                            f"edge names an unknown stage (stages: {', '.join(stages)})")
                    ends.append(None)
                continue
            ins, outs = stages[sname].ports
            avail = outs if role == "from" else ins
            kind = "output" if role == "from" else "input"
            if port is None:
                if len(avail) == 1:
                    port = avail[0]
                else:
                    problem(el, sname, f"edges[{i}].{role}",
                            f"stage has {len(avail)} {kind} ports ({', '.join(avail) or 'none'}); name one")
                    ends.append(None)
                    continue
            if port not in avail:
                problem(el, sname, f"edges[{i}].{role}",
                        f"no {kind} port '{port}' (its {kind}s: {', '.join(avail) or 'none'})")
                ends.append(None)
                continue
            ends.append((sname, port))
        if None in ends:
            # an endpoint is broken: do not also report its partner as dangling
            excused.update(x for x in ends if x is not None)
            continue
        (s, sp), (d, dp) = ends
        edges.append(EdgeSpec(s, sp, d, dp, q, el))

    # --- port wiring: every input fed once, every output used once
    fed: dict[tuple[str, str], EdgeSpec] = {}
    used: dict[tuple[str, str], EdgeSpec] = {}
    for e in edges:
        if (e.dst, e.dst_port) in fed:
            other = fed[(e.dst, e.dst_port)]
            problem(e.line, e.dst, f"input '{e.dst_port}'",
                    f"two producers feed one input ({other.src}.{other.src_port} and {e.src}.{e.src_port}); "
                    "add a merge stage")
        fed[(e.dst, e.dst_port)] = e
        if (e.src, e.src_port) in used:
            problem(e.line, e.src, f"output '{e.src_port}'",
                    "output already connected: one edge per output port (use a stage with two outputs to fan out)")
        used[(e.src, e.src_port)] = e
        if e.src == e.dst:
            problem(e.line, e.src, None, "edge connects a stage to itself")
    for spec in stages.values():
        ins, outs = spec.ports
        for p in ins:
            if (spec.name, p) not in fed and (spec.name, p) not in excused:
                problem(spec.line, spec.name, f"input '{p}'", "input port is not connected (dangling)")
        for p in outs:
            if (spec.name, p) not in used and (spec.name, p) not in excused:
                problem(spec.line, spec.name, f"output '{p}'", "output port is not connected (dangling)")

    # --- cycles
    if stages:
        _, cycle = _toposort(stages, edges)
        if cycle:
            problem(None, cycle[0], None, "cycle: " + " -> ".join(cycle))

    # --- groups and placement
    groups: dict[str, GroupSpec] = {}
    for spec in stages.values():
        g = groups.setdefault(spec.group, GroupSpec(spec.group, []))
        g.stages.append(spec.name)
    for gname in group_decl:
        if gname not in groups:
            problem(groups_raw.line_of(gname) if isinstance(groups_raw, _LineDict) else None,
                    None, f"groups.{gname}", "group declared but no stage is placed in it")
    for g in groups.values():
        decl = group_decl.get(g.name, {})
        g.gpus, g.cpus = decl.get("gpus"), decl.get("cpus")
        g.resources = dict(decl.get("resources") or {})
        cuda_stages = [s for s in g.stages if stages[s].uses_cuda]
        g.cuda = bool(cuda_stages)
        devices = {str(stages[s].params.get("device")) for s in cuda_stages}
        if len(devices) > 1:
            problem(stages[cuda_stages[0]].line, cuda_stages[0], "group",
                    f"group '{g.name}' mixes CUDA devices {sorted(devices)}: one group shares one CUDA context")
        if cuda_stages and g.gpus is not None and g.gpus == 0:
            problem(stages[cuda_stages[0]].line, cuda_stages[0], "group",
                    f"stage uses CUDA but its group '{g.name}' declares gpus: 0")
        replicated = [s for s in g.stages if stages[s].workers > 1]
        for s in replicated:
            spec = stages[s]
            if len(g.stages) > 1:
                problem(spec.line, s, "workers",
                        f"a replicated stage needs a group of its own; group '{g.name}' also holds "
                        f"{', '.join(x for x in g.stages if x != s)}")
            if not spec.cls.stateless:
                problem(spec.line, s, "workers",
                        f"stage type '{spec.type}' keeps state across items and cannot be replicated")
            if spec.uses_cuda:
                problem(spec.line, s, "workers", "CUDA stages cannot be replicated (one CUDA process per GPU)")
            if not spec.ports[0]:
                problem(spec.line, s, "workers", "sources cannot be replicated")
            g.workers = spec.workers
    for e in edges:
        a, b = stages[e.src], stages[e.dst]
        if a.workers > 1 and b.workers > 1:
            problem(e.line, e.dst, "workers",
                    f"replicated stages '{e.src}' and '{e.dst}' are directly connected; "
                    "put them in one stage or place an unreplicated stage between")

    if problems:
        raise GraphError(problems)
    args = {}
    for k, v in (raw.get("args") or {}).items():
        targets = [v] if isinstance(v, str) else v
        ok = isinstance(targets, list) and targets and all(
            isinstance(t, str) and t.partition(".")[0] in stages
            and t.partition(".")[2] in stages[t.partition(".")[0]].cls.params for t in targets)
        if not ok:
            raise GraphError([f"{path}: args: shortcut '{k}' must name stage.param or a list of "
                              f"them, got {v!r}"])
        args[str(k)] = list(targets)
    name = raw.get("name") or os.path.splitext(fname)[0]
    return GraphSpec(str(name), path, stages, edges, groups, args, default_q, notes)
