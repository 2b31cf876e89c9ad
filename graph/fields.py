"""Data fields between stages: every field a stage reads must be written upstream of it.

A stage declares the fields of `Item.data` / `Batch.data` it needs (`Stage.reads`: a tuple,
or a mapping input port -> tuple) and those it adds (`Stage.writes`). The engine knows no
field names: it only checks that for each input port of each stage, every field read there
is written by some stage upstream of that port, so a graph missing a producer fails
validation (and `--dry-run`) instead of failing at its first frame.

Undeclared stages pass through: `reads = None` is not checked, and `writes = None` (a stage
that may add anything, such as a user's `module:Class` stage) makes every field available
after it.
"""
from __future__ import annotations


def check_fields(stages: dict, edges: list, path: str = "<graph>") -> list[str]:
    """One problem line per field a stage reads that no stage upstream of it writes
    (`stages`: name -> StageSpec, `edges`: the validated, acyclic EdgeSpecs)."""
    feeds: dict[str, dict[str, str]] = {name: {} for name in stages}   # input port -> source
    for e in edges:
        feeds[e.dst][e.dst_port] = e.src
    above: dict[str, set[str]] = {}
    order: list[str] = []        # topological: a stage after every stage upstream of it

    def upstream(name: str) -> set[str]:
        if name not in above:
            above[name] = set()
            for src in feeds[name].values():
                above[name] |= {src} | upstream(src)
            order.append(name)
        return above[name]

    for name in stages:
        upstream(name)
    problems = []
    for name in order:
        spec, reads = stages[name], stages[name].cls.reads
        if reads is None:
            continue
        for port, src in feeds[name].items():
            need = reads.get(port, ()) if isinstance(reads, dict) else reads
            up = [s for s in order if s == src or s in above[src]]
            writes = [stages[s].cls.writes for s in up]
            if any(w is None for w in writes):
                continue
            have = set().union(*writes)
            on = f" on input '{port}'" if len(feeds[name]) > 1 else ""
            where = f"{path}:{spec.line}" if spec.line else path
            problems += [f"{where}: stage '{name}': reads field '{field}'{on} that no upstream "
                         f"stage writes (upstream: {', '.join(up)})"
                         for field in need if field not in have]
    return problems
