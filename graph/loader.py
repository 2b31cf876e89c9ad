"""Graph files read as YAML that keeps line numbers, so a problem found later names its line.

Mappings remember the line of each key (`LineDict.line_of`), lists the line of each item
(`LineList.lines`).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import yaml

from .builtin import builtin_names, find_graph_file, is_path
from .model import GraphError


class LineDict(dict):
    lines: dict

    def line_of(self, key: Any) -> int | None:
        return getattr(self, "lines", {}).get(key)


class LineList(list):
    lines: list


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    mapping = LineDict(loader.construct_mapping(node, deep=True))
    mapping.lines = {loader.construct_object(k, deep=True): k.start_mark.line + 1
                     for k, _ in node.value}
    mapping.lines["__self__"] = node.start_mark.line + 1
    return mapping


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    seq = LineList(loader.construct_sequence(node, deep=True))
    seq.lines = [child.start_mark.line + 1 for child in node.value]
    return seq


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def line_getter(node: Any) -> Callable[[Any], int | None]:
    """key -> line for a mapping read from a file; no lines for anything else."""
    return node.line_of if isinstance(node, LineDict) else (lambda key: None)


def read_graph_file(graph: str) -> tuple[str, Any]:
    """(path, document) of a graph file or a built-in graph name."""
    path = find_graph_file(graph)
    try:
        with open(path, encoding="utf-8") as f:
            return path, yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        hint = "" if is_path(path) else f" (built-in graphs: {', '.join(builtin_names())})"
        raise GraphError([f"{path}: no such graph file{hint}"]) from None
    except yaml.YAMLError as exc:
        raise GraphError([f"{path}: not valid YAML: {exc}"]) from None


def graph_name(raw: dict, path: str) -> str:
    """The graph's `name:`, else its file name without the extension."""
    fname = os.path.basename(path) if path else "<graph>"
    return str(raw.get("name") or os.path.splitext(fname)[0])
