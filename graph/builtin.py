"""Built-in graphs: the files under ``configs/graphs`` (package data), found by name.

``lipgraph musetalk ...`` and ``load_graph("surgical")`` work after a plain install, from any
folder; anything that looks like a path (an existing file, a ``.yaml`` name, a separator) is a
path.
"""
from __future__ import annotations

import importlib.resources
import os

ALIASES = {"latentsync": "surgical"}


def _graphs_dir():
    return importlib.resources.files("lipgraph.configs") / "graphs"


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in _graphs_dir().iterdir() if p.name.endswith(".yaml"))


def is_path(name: str) -> bool:
    return (os.path.exists(name) or name.endswith((".yaml", ".yml"))
            or os.sep in name or (os.altsep or os.sep) in name)


def find_graph_file(name: str) -> str:
    """The file of a built-in graph name, or `name` itself when it is a path or unknown
    (the loader then reports the missing file together with the built-in names)."""
    if is_path(name):
        return name
    candidate = _graphs_dir() / f"{ALIASES.get(name, name)}.yaml"
    return str(candidate) if candidate.is_file() else name
