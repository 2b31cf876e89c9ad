"""Stage types by name.

Graph files name stage types (`type: face_detect`). Stage packages register their types here
when imported, each name mapped to an import path ``module:Class``, so a module is imported
only when a graph uses its type. Modules named in $LIPGRAPH_STAGE_MODULES (comma-separated)
are imported before an unknown name is reported, so types registered outside an installed
package (tests, benchmarks) resolve in processes started from the command line too. A graph
may also name any class directly as ``package.module:Class``.
"""
from __future__ import annotations

import difflib
import importlib
import os

from .stage import Stage

MODULES_ENV = "LIPGRAPH_STAGE_MODULES"

_TYPES: dict[str, str] = {}


def register(type_name: str, target: str) -> None:
    """Register `type_name` as the stage class at import path ``module:Class``."""
    _TYPES[type_name] = target


class UnknownStageType(LookupError):
    pass


def resolve(type_name: str) -> type[Stage]:
    """The stage class for a type name (or a ``module:Class`` path)."""
    if type_name not in _TYPES:
        for module in filter(None, (m.strip() for m in os.environ.get(MODULES_ENV, "").split(","))):
            importlib.import_module(module)
    target = _TYPES.get(type_name)
    if target is None:
        if ":" not in type_name:
            close = difflib.get_close_matches(type_name, _TYPES, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = ", ".join(sorted(_TYPES)) or "none: no package of stages was imported"
            raise UnknownStageType(f"unknown stage type {type_name!r}{hint} (known: {known})")
        target = type_name
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise UnknownStageType(f"stage type {type_name!r}: cannot import {target}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise UnknownStageType(f"stage type {type_name!r}: {target} is not a Stage subclass")
    return cls
