"""What every runner shares: options, the result, live progress and profile output."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Callable

from lipgraph.graph.profile import build_profile, format_table, merge_traces, write_json_atomic

from .errors import RunError


@dataclasses.dataclass
class RunOptions:
    profile_path: str | None = None      # JSON profile; None: no file
    trace_path: str | None = None        # Chrome trace; None: no file
    progress: bool = True                # live progress on stderr
    table: bool = True                   # per-stage table on stderr at the end
    profile_every_s: float = 5.0         # rewrite the profile JSON while running
    stream: Any = None                   # where progress, warnings and the table go (default stderr)
    stall_timeout_s: float = 300.0       # fail when nothing moves this long (0: never)
    extra: dict = dataclasses.field(default_factory=dict)   # added to the profile JSON
    on_progress: Callable[["ProgressInfo"], None] | None = None   # called from the run's thread
    progress_every_s: float = 0.5        # how often on_progress is called while running
    cancel: Any = None                   # set (a threading.Event): stop as cancelled within one poll


@dataclasses.dataclass
class RunResult:
    status: str                          # ok | failed | interrupted
    profile: dict
    error: RunError | None = None
    exit_code: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)   # "stage: text", once each

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclasses.dataclass
class ProgressInfo:
    """What `RunOptions.on_progress` receives: the engine's own progress."""
    done: int                            # items the sinks have taken
    total: int | None                    # items the sources will send (None: not known yet)
    rate: float                          # items/s over the last 10 s
    eta_s: float | None
    elapsed_s: float
    stages: dict                         # per-stage figures, as in the profile JSON's "stages"
    final: bool = False                  # the last call, once the run has ended


class Progress:
    """Items done / total, rate and ETA on stderr: redrawn in place on a terminal, a plain
    line every `plain_every_s` otherwise (so logs are not flooded)."""

    def __init__(self, label: str, stream=None, enabled: bool = True, plain_every_s: float = 30.0):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.5 if self.tty else plain_every_s
        self.t0 = time.monotonic()
        self.last_print = self.t0 if not self.tty else 0.0
        self.window: list[tuple[float, int]] = []
        self.drawn = False

    def update(self, done: int, total: int | None, force: bool = False) -> tuple[float, float | None]:
        """Record `done` now and draw when due; the rate over the last 10 s and the ETA
        (None: unknown)."""
        now = time.monotonic()
        self.window.append((now, done))
        while len(self.window) > 2 and now - self.window[0][0] > 10:
            self.window.pop(0)
        (t_a, n_a), (t_b, n_b) = self.window[0], self.window[-1]
        rate = (n_b - n_a) / (t_b - t_a) if t_b > t_a else 0.0
        eta = (total - done) / rate if total and rate > 0 else None
        if not self.enabled or (not force and now - self.last_print < self.every):
            return rate, eta
        self.last_print = now
        if total:
            pct = 100.0 * done / total
            eta_txt = f", ETA {_hms(eta)}" if eta is not None else ""
            text = f"{self.label}: {done}/{total} ({pct:.0f}%) {rate:.1f} items/s{eta_txt}"
        else:
            text = f"{self.label}: {done} items, {rate:.1f} items/s, {_hms(now - self.t0)} elapsed"
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        return rate, eta

    def done(self) -> None:
        if self.enabled and self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _hms(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Reporter:
    """Collects process snapshots during a run and writes the profile and trace."""

    def __init__(self, graph, runner: str, options: RunOptions):
        self.graph = graph
        self.runner = runner
        self.options = options
        self.stream = options.stream or sys.stderr
        self.started = time.time()
        self.processes: dict = {}
        self.total: int | None = None
        self.progress = Progress(graph.name, self.stream, options.progress)
        self.last_write = time.monotonic()
        self.report_failed: set = set()      # reports that could not be written (warned once)
        self.trace_parts: list[str] = []
        self.warned: dict[tuple[str, str], None] = {}     # in the order first said
        self.last_hook = 0.0

    def warn(self, stage: str, message: str) -> None:
        """A stage's warning on stderr, once per run (replicas and repeats say it once)."""
        if (stage, message) in self.warned:
            return
        self.warned[(stage, message)] = None
        self.stream.write(f"warning: {stage}: {message}\n")
        self.stream.flush()

    def items_done(self) -> int:
        sinks = set(self.graph.sinks())
        return sum(s["items_in"] for p in self.processes.values() for s in p.get("stages", [])
                   if s["stage"] in sinks)

    def warnings(self) -> list[str]:
        return [f"{stage}: {text}" for stage, text in self.warned]

    def tick(self) -> None:
        done = self.items_done()
        rate, eta = self.progress.update(done, self.total)
        if (self.options.on_progress is not None
                and time.monotonic() - self.last_hook >= self.options.progress_every_s):
            self._hook(self.profile("running"), done, rate, eta)
        if (self.options.profile_path and self.options.profile_every_s
                and time.monotonic() - self.last_write >= self.options.profile_every_s):
            self.last_write = time.monotonic()
            self._write_report(lambda: write_json_atomic(self.options.profile_path,
                                                         self.profile("running")), "profile")

    def _write_report(self, write, what: str) -> bool:
        """Write the profile or trace; a full disk or a lost folder costs the report, never
        the run (nor the message saying why the run failed)."""
        try:
            write()
            return True
        except OSError as exc:
            if what not in self.report_failed:
                self.report_failed.add(what)
                self.warn("lipgraph", f"could not write the {what} ({exc.strerror or exc}): "
                          f"{getattr(exc, 'filename', '') or ''}; the run goes on without it")
            return False

    def profile(self, status: str, error: RunError | None = None) -> dict:
        extra = dict(self.options.extra)
        if getattr(self.graph, "notes", None):
            extra["notes"] = list(self.graph.notes)
        return build_profile(self.graph, self.processes, runner=self.runner, status=status,
                             started=self.started, error=error and error.to_dict(), total=self.total, extra=extra)

    def _hook(self, prof: dict, done: int, rate: float, eta: float | None, final: bool = False) -> None:
        """Tell `on_progress`; its exceptions are its own (warned once), never the run's."""
        self.last_hook = time.monotonic()
        info = ProgressInfo(done, self.total, rate, eta, time.time() - self.started,
                            prof.get("stages", {}), final)
        try:
            self.options.on_progress(info)
        except Exception as exc:  # noqa: BLE001
            self.warn("lipgraph", f"the progress callback failed ({type(exc).__name__}: {exc})")

    def finish(self, status: str, error: RunError | None = None) -> dict:
        done = self.items_done()
        rate, eta = self.progress.update(done, self.total, force=True)
        self.progress.done()
        prof = self.profile(status, error)
        if self.options.on_progress is not None:
            self._hook(prof, done, rate, eta, final=True)
        if self.options.trace_path and self._write_report(
                lambda: merge_traces(self.trace_parts, self.options.trace_path), "trace"):
            prof["trace_path"] = self.options.trace_path
        if self.options.profile_path:
            prof["profile_path"] = self.options.profile_path
            if not self._write_report(lambda: write_json_atomic(self.options.profile_path, prof),
                                      "profile"):
                prof.pop("profile_path")
        if self.options.table:
            self.stream.write("\n" + format_table(prof) + "\n")
            if self.options.profile_path:
                self.stream.write(f"profile: {self.options.profile_path}\n")
            if self.options.trace_path:
                self.stream.write(f"trace:   {self.options.trace_path} (open in https://ui.perfetto.dev)\n")
            self.stream.flush()
        for part in self.trace_parts:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
        return prof
