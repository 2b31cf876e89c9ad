"""The `stages:` section checked: each stage's type, params, group and workers; then the
stages' bind hooks and their own param checks."""
from __future__ import annotations

from typing import Any

from .loader import line_getter
from .model import Problems, StageSpec
from .overrides import check_type, choice_problems, type_name, unknown_param
from .registry import UnknownStageType, resolve

_STAGE_KEYS = {"type", "group", "params", "workers"}


def read_stages(stages_raw: dict, problems: Problems) -> dict[str, StageSpec]:
    """The stages that parsed; every other one has its problems reported."""
    stages = {}
    for sname, sval in stages_raw.items():
        spec = _read_stage(sname, sval, line_getter(stages_raw)(sname), problems)
        if spec is not None:
            stages[sname] = spec
    return stages


def _read_stage(sname: Any, sval: Any, sl: int | None, problems: Problems) -> StageSpec | None:
    if not isinstance(sname, str) or not sname.isidentifier():
        problems.add(sl, str(sname), None, "stage names must be identifiers (letters, digits, _)")
        return None
    if not isinstance(sval, dict):
        problems.add(sl, sname, None, "expected a mapping with 'type' (and 'params', 'group', 'workers')")
        return None
    sline = line_getter(sval)
    for k in sval:
        if k not in _STAGE_KEYS:
            problems.add(sline(k), sname, k, f"unknown key (known: {', '.join(sorted(_STAGE_KEYS))})")
    tname = sval.get("type")
    if not isinstance(tname, str):
        problems.add(sline("type") or sl, sname, "type", "missing stage type")
        return None
    try:
        cls = resolve(tname)
    except UnknownStageType as exc:
        problems.add(sline("type"), sname, "type", str(exc))
        return None
    params = _read_params(sname, tname, cls, sval, problems)
    workers = problems.count(sval.get("workers", 1), 1, sline("workers"), sname, "workers")
    group = sval.get("group", sname)
    if not isinstance(group, str) or not group:
        problems.add(sline("group"), sname, "group", "must be a non-empty string")
        group = sname
    return StageSpec(sname, tname, cls, params, group, workers, sl)


def _read_params(sname: str, tname: str, cls, sval: dict, problems: Problems) -> dict:
    """The type's defaults with the file's params on top, each checked against its default."""
    params_raw = sval.get("params") or {}
    if not isinstance(params_raw, dict):
        problems.add(line_getter(sval)("params"), sname, "params", "expected a mapping")
        params_raw = {}
    pline = line_getter(params_raw)
    params = dict(cls.params)
    for k, v in params_raw.items():
        if k not in cls.params:
            problems.add(pline(k), sname, f"params.{k}", unknown_param(cls, tname, k))
            continue
        ok, v2 = check_type(cls.params[k], v)
        if not ok:
            problems.add(pline(k), sname, f"params.{k}", f"expected {type_name(cls.params[k])}, got {v!r}")
        params[k] = v2
    return params


def bind_stages(stages: dict[str, StageSpec], problems: Problems) -> list[str]:
    """Run each type's bind hook (in bind order) and param checks; the notes binds made."""
    notes: list[str] = []
    for spec in sorted(stages.values(), key=lambda sp: sp.cls.bind_order):
        told: list = []
        spec.declared = dict(spec.params)
        try:
            spec.params = spec.cls.bind(dict(spec.params), stages, told)
        except Exception as exc:   # a bind that cannot decide is a problem of this stage
            problems.add(spec.line, spec.name, None, f"{type(exc).__name__}: {exc}")
        notes += [f"{spec.name}: {msg}" for _, msg in told]
    for spec in stages.values():
        for param, msg in choice_problems(spec.cls, spec.params) + spec.cls.validate_params(spec.params):
            problems.add(spec.line, spec.name, f"params.{param}", msg)
    return notes
