"""Stage types by name.

Graph files name stage types (`type: face_detect`). The table maps each name to an import
path so that spawned processes can import the class by name; modules are imported only when
a type is used. A graph may also name any class directly as ``package.module:Class``.
"""
from __future__ import annotations

import difflib
import importlib

from .stage import Stage

_TYPES: dict[str, str] = {}
_builtins_loaded = False


def register(type_name: str, target: str) -> None:
    """Register `type_name` as the stage class at import path ``module:Class``."""
    _load_builtin_table()
    _TYPES[type_name] = target


def _load_builtin_table() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        from lipgraph.stages import STAGE_TYPES
        for name, target in STAGE_TYPES.items():
            _TYPES.setdefault(name, target)
        _builtins_loaded = True


def known_types() -> list[str]:
    _load_builtin_table()
    return sorted(_TYPES)


class UnknownStageType(LookupError):
    pass


def resolve(type_name: str) -> type[Stage]:
    """The stage class for a type name (or a ``module:Class`` path)."""
    _load_builtin_table()
    target = _TYPES.get(type_name)
    if target is None:
        if ":" not in type_name:
            close = difflib.get_close_matches(type_name, _TYPES, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownStageType(
                f"unknown stage type {type_name!r}{hint} (known: {', '.join(sorted(_TYPES))})")
        target = type_name
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise UnknownStageType(f"stage type {type_name!r}: cannot import {target}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise UnknownStageType(f"stage type {type_name!r}: {target} is not a Stage subclass")
    cls.type_name = cls.type_name or type_name
    return cls
