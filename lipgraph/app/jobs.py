"""The web app's jobs: one at a time (one GPU), in order of arrival, each in its own folder,
removed a while after it ends."""
from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
import uuid
from typing import Any, Callable


@dataclasses.dataclass
class Job:
    kind: str                                  # "run" or "ab"
    folder: str
    work: Callable[["Job"], Any]               # does the job; its return value is `result`
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "queued"                      # queued | running | done | failed | cancelled
    progress: Any = None                       # the last ProgressInfo
    result: Any = None
    error: str | None = None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    ended_at: float | None = None
    owner: str | None = None                   # the visitor (browser session) who asked

    @property
    def over(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


class JobQueue:
    """A single worker thread takes the jobs in turn; `keep_s` after a job ends its folder and
    its record go (checked by the worker every `SWEEP_S` while idle, and as each job ends)."""

    SWEEP_S = 60.0

    def __init__(self, root: str, keep_s: float = 3600.0):
        self.root, self.keep_s = root, keep_s
        os.makedirs(root, exist_ok=True)
        self.jobs: dict[str, Job] = {}
        self.waiting: list[Job] = []
        self.lock = threading.Condition()
        threading.Thread(target=self._serve, name="lipgraph-jobs", daemon=True).start()

    def new_folder(self) -> str:
        return os.path.join(self.root, uuid.uuid4().hex[:12])

    def submit(self, kind: str, folder: str, work: Callable[[Job], Any], owner: str | None = None) -> Job:
        job = Job(kind, folder, work, owner=owner)
        with self.lock:
            self.jobs[job.id] = job
            self.waiting.append(job)
            self.lock.notify_all()
        return job

    def latest(self, owner: str, kind: str) -> Job | None:
        """The visitor's newest job of this kind still on record (None once it is swept)."""
        with self.lock:
            mine = [j for j in self.jobs.values() if j.owner == owner and j.kind == kind]
        return mine[-1] if mine else None

    def position(self, job: Job) -> int:
        """0: running or ended; n: n-th in line."""
        with self.lock:
            return self.waiting.index(job) + 1 if job in self.waiting else 0

    def cancel(self, job: Job) -> None:
        """A waiting job leaves the line; a running one stops cleanly (the run's `cancel`)."""
        with self.lock:
            if job in self.waiting:
                self.waiting.remove(job)
                job.state, job.ended_at = "cancelled", time.time()
        job.cancel.set()

    def _serve(self) -> None:
        while True:
            with self.lock:
                if not self.waiting:
                    # --keep 0 must not spin: a tenth of a second at the least
                    self.lock.wait(timeout=max(0.1, min(self.SWEEP_S, self.keep_s)))
                job = self.waiting.pop(0) if self.waiting else None
                if job is not None:
                    job.state = "running"
            if job is not None:
                self._run(job)
            self.sweep()

    def _run(self, job: Job) -> None:
        from lipgraph.api import Cancelled
        from lipgraph.launch import LipgraphError
        try:
            job.result = job.work(job)
            job.state = "done"
        except Cancelled as exc:
            job.state, job.error = "cancelled", str(exc)
        except (LipgraphError, SystemExit) as exc:     # the tools' refusals are SystemExit
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001  (the page shows it; the server goes on)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        job.ended_at = time.time()

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove the folders (and records) of jobs that ended more than `keep_s` ago."""
        now = time.time() if now is None else now
        with self.lock:
            old = [j for j in self.jobs.values() if j.over and now - j.ended_at >= self.keep_s]
            for job in old:
                del self.jobs[job.id]
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)
        return [job.id for job in old]
