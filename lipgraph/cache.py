"""Where lipgraph keeps what it builds once and reuses: ~/.cache/lipgraph (or $LIPGRAPH_CACHE)."""
from __future__ import annotations

import os


def cache_folder(name: str) -> str:
    base = os.environ.get("LIPGRAPH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lipgraph")
    return os.path.join(base, name)
