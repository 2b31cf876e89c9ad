"""The Python API: the command line's runs as function calls, on the same engine and graphs.

    import lipgraph
    result = lipgraph.lipsync("in.mp4", "dub.wav", "out.mp4", graph="musetalk",
                              set={"detect.detect_every": 3}, progress=print)
    result.output, result.frames, result.cutaways, result.fallbacks, result.warnings

`lipsync` fills the built-in graphs' shortcuts (video, audio, output, weights, ...);
`run_graph` runs any graph file, or a loaded `GraphSpec`, with `stage.param` overrides. Both
check every input and model file before anything loads (`UsageError`), and raise `RunFailed`
(`Cancelled` when stopped through `cancel`) with the message the command line prints. A run
may be started from any thread; `cancel` (a `threading.Event`) stops it with the guarantees of
Ctrl-C: nothing at the output path, no worker processes or shared memory left.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
from typing import Any, Callable, Iterable

from .launch import LipgraphError, UsageError, check, default_paths, load, make_runner

__all__ = ["lipsync", "run_graph", "Result", "LipgraphError", "UsageError", "RunFailed", "Cancelled"]


class RunFailed(LipgraphError):
    """The run started and failed: a stage raised, a worker died, a stall. `error` is the
    engine's `RunError` (stage, item, traceback), `profile` the run's profile so far."""

    def __init__(self, message: str, error=None, profile: dict | None = None, exit_code: int = 1):
        super().__init__(message)
        self.error, self.profile, self.exit_code = error, profile or {}, exit_code


class Cancelled(RunFailed):
    """Stopped through `cancel` (or a signal) before the end; the output was not written."""


@dataclasses.dataclass
class Result:
    output: str | None                 # the file written (None: the graph writes none)
    profile: dict                      # the profile JSON's content
    frames: int                        # frames the sinks took
    cutaways: int                      # frames without a face to dub, passed through
    fallbacks: dict[str, int]          # frames a model gave up on, per reason
    warnings: list[str]                # "stage: text", each once
    notes: list[str]                   # what the graph and the job noted before the run
    random_weights: str | None = None  # "tiny" / "full": the output is NOT lip-synced

    @property
    def profile_path(self) -> str | None:
        return self.profile.get("profile_path")

    @property
    def trace_path(self) -> str | None:
        return self.profile.get("trace_path")


def lipsync(video: str, audio: str, output: str, graph: str = "musetalk", weights: str | None = None,
            device: str | None = None, dtype: str | None = None, set: dict | Iterable[str] | None = None,
            random_weights: bool | str = False, progress: Callable | None = None, resume: bool = False,
            cancel=None, **options: Any) -> Result:
    """Dub `video` with `audio` into `output` through a built-in graph (musetalk, surgical) or
    a graph file. `set`: `{"stage.param": value}` (or "stage.param=value" lines), applied
    after the shortcuts; `random_weights`: True or "tiny" / "full" (the output is NOT
    lip-synced); `progress(info)`: called about twice a second with a `ProgressInfo` (done,
    total, rate, eta_s, stages); `cancel`: a `threading.Event`. Other keywords: the graph's
    other shortcuts (face, fps, steps, guidance, ...) and `run_graph`'s own."""
    run_kw = {k: options.pop(k) for k in ("runner", "address", "profile", "trace",
                                          "stall_timeout_s", "say") if k in options}
    shortcuts = {"video": video, "audio": audio, "output": output, "weights": weights,
                 "device": device, "dtype": dtype, **options}
    return run_graph(graph, set or {}, shortcuts=shortcuts, random_weights=random_weights,
                     progress=progress, resume=resume, cancel=cancel, **run_kw)


def run_graph(spec_or_path, overrides: dict | Iterable[str] | None = None, runner: str = "process", *,
              shortcuts: dict | None = None, random_weights: bool | str = False,
              progress: Callable | None = None, cancel=None, resume: bool = False,
              profile: str | None = None, trace: str | bool | None = None, address: str | None = None,
              stall_timeout_s: float = 300.0, say: Callable[[str], None] | None = None) -> Result:
    """Run a graph file, a built-in graph's name or a loaded `GraphSpec` (run as it is) on
    `runner` (process, inline, ray). The profile JSON and trace go beside the output (or to
    `profile` / `trace`; `trace=False`: none)."""
    from lipgraph.runners import RunOptions, format_error
    if runner == "process" and _importing_main_in_a_worker():
        raise UsageError("lipgraph was called while a worker process imported your script: put "
                         "the call under `if __name__ == \"__main__\":` (each worker process "
                         "imports the main script, as multiprocessing's spawn does)")
    notes: list[str] = []
    say = say or notes.append
    size = "tiny" if random_weights is True else (random_weights or None)
    if isinstance(spec_or_path, str):
        graph = load(spec_or_path, overrides or {}, shortcuts, size, say=say)
    elif overrides or shortcuts or size:
        raise UsageError("a loaded graph runs as it is: give a graph file or name to set params")
    else:
        graph = spec_or_path
    plan = check(graph, resume, say=say)
    output = graph.output_path()
    prof_default, trace_default = default_paths(graph)
    options = RunOptions(profile_path=profile or prof_default,
                         trace_path=None if trace is False else (trace or trace_default),
                         progress=False, table=False, stall_timeout_s=stall_timeout_s,
                         on_progress=progress, cancel=cancel)
    if size:
        options.extra["random_weights"] = size
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled before the run started")
    result = make_runner(graph, options, runner, address).run()
    if not result.ok:
        message = format_error(result.error)
        if plan is not None and os.path.isdir(plan.workdir):
            message += f"\ncompleted segments are kept in {plan.workdir}; run again with resume=True"
        kind = Cancelled if result.error.kind in ("cancelled", "interrupted") else RunFailed
        raise kind(message, result.error, result.profile, result.exit_code)
    return summarize(result.profile, output and os.path.abspath(output), result.warnings, notes, size)


def _importing_main_in_a_worker() -> bool:
    """True inside a spawned worker that is importing the user's script (as `__mp_main__`):
    a run started there would start workers of its own, without end."""
    # `_inheriting` is multiprocessing's own mark of that phase (its spawn check reads it)
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def summarize(profile: dict, output: str | None, warnings: list[str], notes: list[str],
              random_weights: str | None = None) -> Result:
    """A run's counts, read from its profile."""
    cutaways, fallbacks = 0, {}
    for stage in profile.get("stages", {}).values():
        counters, reasons = stage.get("counters") or {}, stage.get("reasons") or {}
        cutaways += counters.get("cutaways", 0)
        for key, n in counters.items():
            if "fallback" in key and key.endswith("frames"):
                for reason, count in (reasons.get(key) or {key: n}).items():
                    fallbacks[reason] = fallbacks.get(reason, 0) + count
    return Result(output, profile, profile.get("items_done") or 0, cutaways, fallbacks,
                  list(warnings), list(notes), random_weights)
