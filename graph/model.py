"""The validated graph: stages, edges, placement groups and the command-line shortcuts."""
from __future__ import annotations

import dataclasses
from typing import Any

from .stage import Stage

DEFAULT_QUEUE_SIZE = 8
OUTPUT = "output"     # the shortcut naming the file a run writes (`--output`)


class GraphError(ValueError):
    """One or more problems in a graph file; `problems` holds each formatted line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid graph:\n  " + "\n  ".join(problems))


class Problems(list):
    """The problems found so far, each line naming the file, line, stage and field."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def add(self, line: int | None, stage: str | None, field: str | None, msg: str) -> None:
        parts = [f"{self.path}:{line}" if line else self.path]
        if stage:
            parts.append(f"stage '{stage}'")
        if field:
            parts.append(f"field '{field}'")
        self.append(": ".join(parts) + ": " + msg)

    def count(self, value: Any, default: int, line: int | None, stage: str | None, field: str,
              how: str = "") -> int:
        """`value` if it is an integer >= 1 (a queue size, workers), else `default` and a problem."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        self.add(line, stage, field, f"{how}must be an integer >= 1, got {value!r}")
        return default

    def raise_any(self) -> None:
        if self:
            raise GraphError(list(self))


def output_target(shortcuts: dict[str, list[str]]) -> tuple[str, str] | None:
    """(stage, param) that the `output` shortcut sets first: the sink writing the result."""
    targets = shortcuts.get(OUTPUT)
    if not targets:
        return None
    stage, _, param = targets[0].partition(".")
    return stage, param


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
        order, _ = toposort(self.stages, self.edges)
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

    def output_stage(self) -> StageSpec | None:
        """The stage writing the run's result (the one `--output` sets); None without one."""
        target = output_target(self.args)
        return self.stages[target[0]] if target else None

    def output_path(self) -> str | None:
        """The file the run writes (the value `--output` set); None without an output."""
        target = output_target(self.args)
        return self.stages[target[0]].params.get(target[1]) if target else None


def toposort(stages: dict, edges: list[EdgeSpec]) -> tuple[list[str], list[str] | None]:
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
