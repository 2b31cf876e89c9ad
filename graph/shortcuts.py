"""Command-line shortcuts: a graph's `args:` section (``--video X`` sets ``video.path`` ...).

The one reader of that section. `read_outline` gives a command line what it needs before the
graph can be validated (the shortcut names, to parse argv); validation checks each shortcut's
targets against the stages and turns the values given into overrides.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .loader import graph_name, line_getter, read_graph_file
from .model import GraphError, Problems, StageSpec, output_target
from .overrides import CommandText, Override


def shortcut_targets(value: Any) -> list[str] | None:
    """The stage.param names one shortcut sets (one name or a non-empty list); None if malformed."""
    targets = [value] if isinstance(value, str) else value
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        return list(targets)
    return None


@dataclasses.dataclass
class GraphOutline:
    """A graph file as written, before validation: what a command line for it needs."""
    path: str
    name: str
    shortcuts: dict[str, list[str]]
    stage_types: dict[str, str]

    @property
    def output_stage(self) -> str | None:
        """The stage `--output` sets (the sink writing the run's result)."""
        target = output_target(self.shortcuts)
        return target[0] if target else None


def read_outline(graph: str) -> GraphOutline:
    """Name, shortcuts and stage types of a graph file or built-in graph, unchecked (`load_graph`
    checks them, with the values given); GraphError when it cannot be read as a graph."""
    path, raw = read_graph_file(graph)
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), dict):
        raise GraphError([f"{path}: expected a mapping with 'stages' and 'edges'"])
    args = raw.get("args") if isinstance(raw.get("args"), dict) else {}
    shortcuts = {str(k): t for k, v in args.items() if (t := shortcut_targets(v))}
    types = {str(n): str(s.get("type")) for n, s in raw["stages"].items() if isinstance(s, dict)}
    return GraphOutline(path, graph_name(raw, path), shortcuts, types)


def _names_param(target: str, stages: dict[str, StageSpec]) -> bool:
    stage, _, param = target.partition(".")
    return stage in stages and param in stages[stage].cls.params


def check_shortcuts(raw: dict, stages: dict[str, StageSpec], problems: Problems) -> dict[str, list[str]]:
    """The `args:` section checked against the parsed stages: shortcut -> stage.param names.
    A shortcut naming a stage that has problems of its own is left out, unreported."""
    section = raw.get("args") or {}
    if not isinstance(section, dict):
        problems.add(line_getter(raw)("args"), None, "args",
                     "expected a mapping of shortcut -> stage.param (or a list of them)")
        return {}
    stages_raw = raw.get("stages")
    broken = set(stages_raw) - set(stages) if isinstance(stages_raw, dict) else set()
    args = {}
    for name, value in section.items():
        targets = shortcut_targets(value)
        if targets and any(t.partition(".")[0] in broken for t in targets):
            continue
        if not targets or not all(_names_param(t, stages) for t in targets):
            problems.add(None, None, None, f"args: shortcut '{name}' must name stage.param or a "
                                           f"list of them, got {value!r}")
            continue
        args[str(name)] = targets
    return args


def shortcut_overrides(raw: dict, args: dict[str, list[str]], values: dict,
                       problems: Problems) -> list[Override]:
    """Overrides for shortcut values given (``{"video": "in.mp4", ...}``), read like ``--set``."""
    declared = [str(k) for k in raw.get("args") or {}] if isinstance(raw.get("args"), dict) else []
    out: list[Override] = []
    for name, value in values.items():
        if name not in declared:
            problems.add(None, None, None, f"no shortcut '{name}' (args: {', '.join(declared) or 'none'})")
            continue
        for target in args.get(name, ()):
            stage, _, param = target.partition(".")
            # text is read like --set; a value given as data (a list of --dub ...) stays data
            out.append((stage, param, CommandText(value) if isinstance(value, str) else value))
    return out
