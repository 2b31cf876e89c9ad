"""Runners execute a validated graph: `process` (default), `inline`, and `ray`."""
from __future__ import annotations

from .errors import format_error
from .report import RunOptions, RunResult

RUNNERS = ("process", "inline", "ray")


def get_runner(name: str):
    if name == "process":
        from .process import ProcessRunner
        return ProcessRunner
    if name == "inline":
        from .inline import InlineRunner
        return InlineRunner
    if name == "ray":
        from .ray_runner import RayRunner
        return RayRunner
    raise ValueError(f"unknown runner {name!r} (choose from {', '.join(RUNNERS)})")


def run_graph(graph, runner: str = "process", options: RunOptions | None = None) -> RunResult:
    """Run a validated graph and return its result (with the profile)."""
    return get_runner(runner)(graph, options or RunOptions(progress=False, table=False)).run()


__all__ = ["RunOptions", "RunResult", "format_error", "get_runner", "run_graph", "RUNNERS"]
