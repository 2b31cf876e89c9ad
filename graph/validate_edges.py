"""The `edges:` section checked (each end names a stage's port), and the wiring of ports:
every input fed once, every output used once."""
from __future__ import annotations

from typing import Any

from .model import EdgeSpec, Problems, StageSpec

_EDGE_KEYS = {"from", "to", "queue_size"}
Port = tuple[str, str]


def read_edges(edges_raw: list, stages: dict[str, StageSpec], stages_raw: dict, default_q: int,
               problems: Problems) -> tuple[list[EdgeSpec], set[Port]]:
    """The edges that parsed, and the good ends of broken edges: those are not reported again
    as dangling."""
    edges: list[EdgeSpec] = []
    excused: set[Port] = set()
    elines = getattr(edges_raw, "lines", [None] * len(edges_raw))
    for i, e in enumerate(edges_raw):
        el = elines[i] if i < len(elines) else None
        fields = _edge_fields(i, e, el, default_q, problems)
        if fields is None:
            continue
        src_txt, dst_txt, q = fields
        ends = [_endpoint(f"edges[{i}].{role}", role == "from", txt, el, stages, stages_raw, problems)
                for role, txt in (("from", src_txt), ("to", dst_txt))]
        if None in ends:
            excused.update(x for x in ends if x is not None)
            continue
        (s, sp), (d, dp) = ends
        edges.append(EdgeSpec(s, sp, d, dp, q, el))
    return edges, excused


def _edge_fields(i: int, e: Any, el: int | None, default_q: int,
                 problems: Problems) -> tuple[Any, Any, int] | None:
    """(from, to, queue size) of one entry, written ``a.out -> b.in`` or as a mapping."""
    q = default_q
    if isinstance(e, str):
        src_txt, arrow, dst_txt = e.partition("->")
        if not arrow:
            problems.add(el, None, f"edges[{i}]", f"expected 'stage.port -> stage.port', got {e!r}")
            return None
    elif isinstance(e, dict):
        for k in e:
            if k not in _EDGE_KEYS:
                problems.add(el, None, f"edges[{i}].{k}", f"unknown key (known: {', '.join(sorted(_EDGE_KEYS))})")
        src_txt, dst_txt = e.get("from"), e.get("to")
        q = e.get("queue_size", default_q)
    else:
        problems.add(el, None, f"edges[{i}]", f"expected a string or a mapping, got {e!r}")
        return None
    return src_txt, dst_txt, problems.count(q, default_q, el, None, f"edges[{i}].queue_size")


def _endpoint(field: str, is_from: bool, txt: Any, el: int | None, stages: dict[str, StageSpec],
              stages_raw: dict, problems: Problems) -> Port | None:
    """(stage, port) of one end; a lone port of the right side may go unnamed."""
    if not isinstance(txt, str) or not txt.strip():
        problems.add(el, None, field, f"expected 'stage.port', got {txt!r}")
        return None
    sname, dot, port = txt.strip().partition(".")
    if sname not in stages:
        if sname not in stages_raw:     # else that stage already has its own problem
            problems.add(el, sname, field, f"edge names an unknown stage (stages: {', '.join(stages)})")
        return None
    ins, outs = stages[sname].ports
    avail, kind = (outs, "output") if is_from else (ins, "input")
    if not dot:
        if len(avail) != 1:
            problems.add(el, sname, field,
                         f"stage has {len(avail)} {kind} ports ({', '.join(avail) or 'none'}); name one")
            return None
        port = avail[0]
    if port not in avail:
        problems.add(el, sname, field, f"no {kind} port '{port}' (its {kind}s: {', '.join(avail) or 'none'})")
        return None
    return sname, port


def check_wiring(stages: dict[str, StageSpec], edges: list[EdgeSpec], excused: set[Port],
                 problems: Problems) -> None:
    fed: dict[Port, EdgeSpec] = {}
    used: dict[Port, EdgeSpec] = {}
    for e in edges:
        if (e.dst, e.dst_port) in fed:
            other = fed[(e.dst, e.dst_port)]
            problems.add(e.line, e.dst, f"input '{e.dst_port}'",
                         f"two producers feed one input ({other.src}.{other.src_port} and {e.src}.{e.src_port}); "
                         "add a merge stage")
        fed[(e.dst, e.dst_port)] = e
        if (e.src, e.src_port) in used:
            problems.add(e.line, e.src, f"output '{e.src_port}'",
                         "output already connected: one edge per output port (use a stage with two outputs to fan out)")
        used[(e.src, e.src_port)] = e
        if e.src == e.dst:
            problems.add(e.line, e.src, None, "edge connects a stage to itself")
    for spec in stages.values():
        ins, outs = spec.ports
        for p in ins:
            if (spec.name, p) not in fed and (spec.name, p) not in excused:
                problems.add(spec.line, spec.name, f"input '{p}'", "input port is not connected (dangling)")
        for p in outs:
            if (spec.name, p) not in used and (spec.name, p) not in excused:
                problems.add(spec.line, spec.name, f"output '{p}'", "output port is not connected (dangling)")
