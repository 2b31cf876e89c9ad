"""Temporary names of files written aside and renamed into place when complete.

A file bound for `PATH` is written to ``.NAME.<pid>x<hex>.partial`` in the same folder (NAME:
the target's file name, pid: the writing process). Whoever writes it removes it on failure,
and the runner removes the ones stages registered; a temporary file can outlive both only
when everything is killed at once (SIGKILL of the whole process group, a power cut). The pid
in the name lets the next run for the same target remove those: `sweep_partials(PATH)`
deletes the temporary files of PATH whose writing process is gone.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager

from lipgraph.graph.shm import pid_alive

_PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)x[0-9a-f]{8}\.partial$")


def partial_path(path: str | os.PathLike) -> str:
    """A fresh temporary name beside `path` for this process."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{name}.{os.getpid()}x{os.urandom(4).hex()}.partial")


@contextmanager
def written_aside(path: str | os.PathLike, on_temp=None):
    """A temporary name beside `path` to write to: renamed onto `path` when the block ends
    without error, removed when it fails. `on_temp(tmp)` is told it before it is created."""
    tmp = partial_path(path)
    if on_temp is not None:
        on_temp(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def stale_partials(path: str | os.PathLike) -> list[str]:
    """Temporary files of `path` whose writing process no longer exists."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    out = []
    for entry in entries:
        m = _PARTIAL_RE.match(entry)
        if m and m.group("name") == name and not pid_alive(int(m.group("pid"))):
            out.append(os.path.join(folder, entry))
    return sorted(out)


def sweep_partials(*paths) -> int:
    """Delete the stale temporary files of each of `paths` (None: skipped); how many."""
    n = 0
    for path in paths:
        if not path:
            continue
        for p in stale_partials(path):
            try:
                os.unlink(p)
                n += 1
            except OSError:
                pass
    return n
