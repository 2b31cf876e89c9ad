"""Param values: their type checks, and overrides (``--set stage.param=value``) applied on
top of a graph file's params."""
from __future__ import annotations

from typing import Any, Iterable

import yaml

from .model import GraphError, Problems, StageSpec

Override = tuple[str, str, Any]     # (stage, param, value)


class CommandText(str):
    """A command-line value not yet read as YAML: string params take it as it is."""


def parse_value(text: str) -> Any:
    """A command-line value as YAML: '3' -> 3, 'true' -> True, 'a' -> 'a'."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(sets: Iterable[str]) -> list[Override]:
    """``stage.param=value`` strings to (stage, param, value) triples."""
    out = []
    for s in sets:
        key, eq, value = s.partition("=")
        stage, dot, param = key.partition(".")
        if not eq or not dot or not stage or not param:
            raise GraphError([f"--set {s!r}: expected stage.param=value"])
        out.append((stage.strip(), param.strip(), CommandText(value)))
    return out


def as_overrides(overrides: Iterable[str] | dict) -> list[Override]:
    """``stage.param=value`` strings, or a ``{"stage.param": value}`` mapping, as triples."""
    if isinstance(overrides, dict):
        return [(k.partition(".")[0], k.partition(".")[2], v) for k, v in overrides.items()]
    return parse_overrides(overrides)


def check_type(default: Any, value: Any) -> tuple[bool, Any]:
    """Whether `value` fits the type of `default` (None accepts anything); coerced value."""
    if default is None or value is None:
        return True, value
    if isinstance(default, bool):
        return isinstance(value, bool), value
    if isinstance(default, int):
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if isinstance(default, str):
        # a number where text is expected ("fps: 25", "detect_every: 5") means that text
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)), list(value) if isinstance(value, tuple) else value
    if isinstance(default, dict):
        return isinstance(value, dict), value
    return True, value


def type_name(default: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "a mapping"}.get(type(default), "a value")


def apply_overrides(stages: dict[str, StageSpec], overrides: Iterable[Override],
                    problems: Problems) -> None:
    """Set each (stage, param, value) on the parsed stages, in order: a later one wins."""
    for sname, param, value in overrides:
        if sname not in stages:
            problems.add(None, sname, param, f"--set names an unknown stage (stages: {', '.join(stages)})")
            continue
        spec = stages[sname]
        if isinstance(value, CommandText):   # '--set x.path=007' stays a string for a string param
            default = spec.cls.params.get(param)
            value = str(value) if isinstance(default, str) else parse_value(value)
        if param == "workers":
            spec.workers = problems.count(value, spec.workers, None, sname, "workers", "--set: ")
            continue
        if param not in spec.cls.params:
            problems.add(None, sname, f"params.{param}", "--set: " + unknown_param(spec.cls, spec.type, param))
            continue
        ok, v2 = check_type(spec.cls.params[param], value)
        if not ok:
            problems.add(None, sname, f"params.{param}",
                         f"--set: expected {type_name(spec.cls.params[param])}, got {value!r}")
            continue
        spec.params[param] = v2


def unknown_param(cls, type_name_: str, param: str) -> str:
    if param in cls.renamed:
        return f"param '{param}' of type '{type_name_}' is now '{cls.renamed[param]}'"
    return f"unknown param for type '{type_name_}' (known: {', '.join(sorted(cls.params)) or 'none'})"


def choice_problems(cls, params: dict) -> list[tuple[str, str]]:
    """Params outside the values the stage type allows (`Stage.choices`)."""
    out = []
    for param, allowed in cls.choices.items():
        if params.get(param) not in allowed:
            names = [str(a) for a in allowed]
            listed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
            out.append((param, f"expected {listed}, got {params.get(param)!r}"))
    return out
