"""Graph files: loading and validation into the graph model.

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
The pieces: `loader` (YAML with line numbers), `model` (the validated graph), `validate`
(with `validate_stages`, `validate_edges`), `overrides` (``--set``) and `shortcuts` (``args:``).
"""
from __future__ import annotations

from typing import Iterable

from .loader import read_graph_file
from .model import DEFAULT_QUEUE_SIZE, EdgeSpec, GraphError, GraphSpec, GroupSpec, StageSpec
from .overrides import as_overrides, parse_overrides, parse_value
from .shortcuts import GraphOutline, read_outline
from .validate import build_graph

__all__ = ["DEFAULT_QUEUE_SIZE", "EdgeSpec", "GraphError", "GraphOutline", "GraphSpec", "GroupSpec",
           "StageSpec", "build_graph", "load_graph", "parse_overrides", "parse_value", "read_outline"]


def load_graph(path: str, overrides: Iterable[str] | dict = (), shortcuts: dict | None = None) -> GraphSpec:
    """Load and validate a graph file (or a built-in graph by name). `shortcuts` gives values to
    the graph's `args:` shortcuts (``{"video": "in.mp4"}``); `overrides`, applied after them,
    are ``stage.param=value`` strings or a ``{"stage.param": value}`` mapping."""
    path, raw = read_graph_file(path)
    return build_graph(raw, path, as_overrides(overrides), shortcuts)
