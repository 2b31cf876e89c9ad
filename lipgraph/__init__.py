"""lipgraph: a stage-graph streaming lip-sync pipeline (MuseTalk v1.5, LatentSync 1.5/1.6).

The subpackages (graph, runners, stages, models, media, vision, tools, configs) live at the
top of the source repository and are installed inside this package, so `lipgraph` is the
only import name an installation adds.

    result = lipgraph.lipsync("in.mp4", "dub.wav", "out.mp4", graph="musetalk")

`lipsync`, `run_graph` and their result and error types (`lipgraph.api`) load on first use,
so `import lipgraph` stays light.
"""
import os as _os

__version__ = "0.1.0"

# In a source checkout the subpackages sit beside this folder rather than inside it.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if (not _os.path.isdir(_os.path.join(_here, "graph"))
        and _os.path.isfile(_os.path.join(_root, "graph", "__init__.py"))
        and _os.path.isfile(_os.path.join(_root, "setup.cfg"))):
    __path__.append(_root)

# The pipeline's stage types register themselves by name (the engine knows none of them).
from . import stages as _stages  # noqa: E402,F401

_API = ("lipsync", "run_graph", "Result", "LipgraphError", "UsageError", "RunFailed", "Cancelled")


def __getattr__(name):
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'lipgraph' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
