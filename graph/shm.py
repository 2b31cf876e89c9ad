"""Moving messages between processes with pixel data in shared memory.

`dumps` pickles a message but stores every large NumPy array (and CPU/CUDA torch tensor) in a
fresh shared-memory file, so only metadata and the file's name travel through the pipe.
`loads` maps each file, unlinks it at once and returns arrays viewing the mapping: no copy on
the receiving side, and the memory is returned when the last array using it is freed.

Segments are named ``lipgraph-<run>-<pid>-<n>``: `sweep(run_id)` removes what a failed run
left, `sweep_stale()` what runs whose main process is gone left, including the named
semaphores of their queues (``sem.mp-lipgraph-<runner pid>-*``, made inside
`named_semaphores()`), which only multiprocessing's resource tracker, killed too, would unlink.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import mmap
import os
import pickle
import re
import sys
import tempfile
import threading

import numpy as np

PREFIX = "lipgraph-"
# arrays smaller than this are pickled inline: a segment costs a few syscalls
INLINE_BYTES = 64 * 1024
_SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


_serial = itertools.count()     # with the writer's pid in every name, unique across processes


def _export(arr: np.ndarray, run_id: str) -> tuple:
    name = f"{PREFIX}{run_id}-{os.getpid()}-{next(_serial)}"
    path = os.path.join(_SHM_DIR, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, arr.nbytes)
        # populate: allocate all pages in one call instead of faulting page by page
        mm = mmap.mmap(fd, arr.nbytes, flags=mmap.MAP_SHARED | _POPULATE)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    try:
        dst = np.frombuffer(mm, dtype=arr.dtype, count=arr.size).reshape(arr.shape)
        np.copyto(dst, arr, casting="no")
        del dst
    finally:
        mm.close()
    return name, arr.dtype.str, arr.shape


def _attach(name: str, dtype: str, shape: tuple) -> np.ndarray:
    path = os.path.join(_SHM_DIR, name)
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    fd = os.open(path, os.O_RDWR)
    try:
        # populate: map every page in one call; the receiver reads all of them anyway
        mm = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | _POPULATE)
    finally:
        os.close(fd)
        os.unlink(path)
    return np.frombuffer(mm, dtype=dt).reshape(shape)


def _torch_of(obj):
    """torch, if `obj` is one of its objects. Only then is torch certain to be fully imported
    (another thread of this process may be importing it right now)."""
    module = type(obj).__module__
    if module == "torch" or module.startswith("torch."):
        return sys.modules.get("torch")
    return None


class _Pickler(pickle.Pickler):
    def __init__(self, file, run_id: str):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.run_id = run_id
        self.segments: list[str] = []

    def persistent_id(self, obj):
        if type(obj) is np.ndarray:
            big = obj.nbytes >= INLINE_BYTES and not obj.dtype.hasobject
            return ("nd",) + self._export(obj) if big else None
        torch = _torch_of(obj)
        if torch is None or not isinstance(obj, torch.Tensor):
            return None
        t = obj.detach().cpu().contiguous()
        # numpy has no bfloat16: its bits travel as int16
        arr = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
        if arr.nbytes < INLINE_BYTES:
            return ("tsmall", t.dtype, arr.copy())
        return ("t", t.dtype) + self._export(arr)

    def _export(self, arr: np.ndarray) -> tuple:
        ref = _export(arr, self.run_id)
        self.segments.append(ref[0])
        return ref


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        kind = pid[0]
        if kind == "nd":
            return _attach(*pid[1:])
        import torch
        if kind not in ("t", "tsmall"):
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        t = torch.from_numpy(pid[2] if kind == "tsmall" else _attach(*pid[2:]))
        return t.view(torch.bfloat16) if pid[1] == torch.bfloat16 else t


def dumps(obj, run_id: str) -> bytes:
    """Pickle `obj`, moving large arrays into shared-memory segments of run `run_id`."""
    buf = io.BytesIO()
    p = _Pickler(buf, run_id)
    try:
        p.dump(obj)
    except BaseException:
        for name in p.segments:  # do not leave half a message behind
            _unlink(name)
        raise
    return buf.getvalue()


def loads(data: bytes):
    return _Unpickler(io.BytesIO(data)).load()


def _listed(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(_SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def segments(run_id: str | None = None) -> list[str]:
    """Names of live segments (of one run, or of every lipgraph run)."""
    return _listed(PREFIX + (f"{run_id}-" if run_id else ""))


def _unlink(name: str) -> bool:
    try:
        os.unlink(os.path.join(_SHM_DIR, name))
        return True
    except FileNotFoundError:
        return False


def sweep(run_id: str) -> int:
    """Remove every segment of a run; returns how many were left."""
    return sum(_unlink(name) for name in segments(run_id))


_RUN_RE = re.compile(r"^" + re.escape(PREFIX) + r"(\d+)x[0-9a-f]+-")


def sweep_stale() -> int:
    """Remove segments of runs whose main process (the pid in the run id) is gone, and the
    named semaphores of such runs."""
    n = 0
    for name in segments() + semaphores():
        m = _RUN_RE.match(name) or _SEM_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            n += _unlink(name)
    return n


# ----- named semaphores of the process runner ---------------------------------------------
SEM_PREFIX = "mp-lipgraph-"
# POSIX named semaphores are files here only on Linux (glibc); elsewhere nothing is swept
_SEM_SWEEP = sys.platform.startswith("linux") and os.path.isdir("/dev/shm")
_SEM_RE = re.compile(r"^sem\." + re.escape(SEM_PREFIX) + r"(\d+)-")
_sem_lock = threading.Lock()


@contextlib.contextmanager
def named_semaphores():
    """Multiprocessing locks, queues and events made inside get semaphores named
    ``/mp-lipgraph-<this pid>-XXXX`` (multiprocessing names them from the current process's
    `semprefix`, default ``/mp``), so `sweep_stale()` can tell whose they are once this
    process is gone. The prefix is process-global: it is changed only while the block runs,
    under a lock (the parts of a split job create their runs from several threads)."""
    from multiprocessing import process
    config = process.current_process()._config
    with _sem_lock:
        old = config.get("semprefix", "/mp")
        config["semprefix"] = f"/{SEM_PREFIX}{os.getpid()}"
        try:
            yield
        finally:
            config["semprefix"] = old


def semaphores(pid: int | None = None) -> list[str]:
    """File names (in /dev/shm) of the named semaphores of lipgraph runs (of one runner)."""
    if not _SEM_SWEEP:        # then _SHM_DIR is /dev/shm
        return []
    prefix = "sem." + SEM_PREFIX + (f"{pid}-" if pid is not None else "")
    return [n for n in _listed(prefix) if _SEM_RE.match(n)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_run_id() -> str:
    return f"{os.getpid()}x{os.urandom(4).hex()}"
