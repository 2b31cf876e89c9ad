"""The execution plan of a validated graph, as `run_graph.py --dry-run` prints it."""
from __future__ import annotations


def effective_capacity(graph, edge) -> int:
    """Messages an edge can hold: a cross-process edge adds the receiver's one-slot channel
    and the message in the receiver's hands to its queue."""
    return edge.queue_size + 2 if graph.is_cross_group(edge) else edge.queue_size


def describe_plan(graph, runner: str = "process") -> str:
    lines = [f"graph {graph.name} ({graph.path}), runner: {runner}", "", "groups:"]
    for gname, g in graph.groups.items():
        tags = []
        if runner == "inline":
            tags.append("inline")
        else:
            tags.append(f"{g.workers} processes" if g.workers > 1 else "1 process")
        if g.cuda:
            tags.append("CUDA")
        if g.gpus is not None:
            tags.append(f"gpus={g.gpus}")
        if g.cpus is not None:
            tags.append(f"cpus={g.cpus}")
        if g.resources:
            tags.append(f"resources={g.resources}")
        lines.append(f"  {gname:<12} [{', '.join(tags)}]  stages: {', '.join(g.stages)}")
    lines += ["", "stages (in order):"]
    for name in graph.topo_order():
        s = graph.stages[name]
        ins, outs = s.ports
        params = ", ".join(f"{k}={v!r}" for k, v in s.params.items())
        w = f" x{s.workers}" if s.workers > 1 else ""
        lines.append(f"  {name:<12} {s.type}{w}  group={s.group}  in=[{', '.join(ins)}] out=[{', '.join(outs)}]")
        if params:
            lines.append(f"  {'':<12} {params}")
    lines += ["", "edges:"]
    for e in graph.edges:
        kind = (f"cross-process {graph.stages[e.src].group} -> {graph.stages[e.dst].group}"
                if graph.is_cross_group(e) else f"in-process ({graph.stages[e.src].group})")
        if runner == "inline":
            kind = "inline deque"
        lines.append(f"  {e.src}.{e.src_port} -> {e.dst}.{e.dst_port}   queue {e.queue_size} "
                     f"(holds up to {effective_capacity(graph, e)})   {kind}")
    if graph.args:
        lines += ["", "arguments:"] + [f"  --{k:<12} sets {', '.join(v)}" for k, v in graph.args.items()]
    if graph.notes:
        lines += ["", "notes:"] + [f"  {n}" for n in graph.notes]
    return "\n".join(lines)
