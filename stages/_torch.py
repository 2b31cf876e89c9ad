"""Device, dtype and model sharing for the stages that run models, and `run_halving`, which
retries a batch that ran out of memory in halves.

Stages of one group share a process, so a model needed by two stages (the VAE for encode
and decode) is loaded once per process through `shared_model`.
"""
from __future__ import annotations

import threading
from typing import Callable

_models: dict = {}
_lock = threading.Lock()

DEVICE_PARAMS = {"device": "auto", "dtype": "auto"}
# dtype param -> torch dtype name ("auto": float16 on CUDA, float32 on CPU)
DTYPES = {"float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16",
          "bf16": "bfloat16", "float32": "float32", "fp32": "float32", "float": "float32"}


def resolve_device(device: str) -> str:
    import torch
    device = (device or "auto").strip()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' requested but CUDA is not available "
                           "(set device: cpu, or run where a GPU is visible)")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch
    dtype = (dtype or "auto").strip()
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto, float16, bfloat16 or float32, got {dtype!r}")
    return getattr(torch, DTYPES[dtype])


def check_device_params(params: dict) -> list[tuple[str, str]]:
    problems = []
    dev = str(params.get("device", "auto"))
    if not (dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:")):
        problems.append(("device", f"expected auto, cpu, cuda or cuda:N, got {dev!r}"))
    dt = str(params.get("dtype", "auto"))
    if dt != "auto" and dt not in DTYPES:
        problems.append(("dtype", f"expected auto, float16, bfloat16 or float32, got {dt!r}"))
    return problems


def shared_model(key: tuple, load: Callable[[], object]):
    """Load once per process and key; later callers get the same object."""
    with _lock:
        if key not in _models:
            quiet_model_libraries()
            _models[key] = load()
        return _models[key]


def quiet_model_libraries() -> None:
    """diffusers/transformers log advice meant for training scripts on every cast; our
    loaders cast deliberately, so keep only their errors."""
    try:
        from diffusers.utils import logging as dlog
        dlog.set_verbosity_error()
        from transformers.utils import logging as tlog
        tlog.set_verbosity_error()
    except ImportError:
        pass


def inference():
    """No gradients anywhere (they cost memory and time for nothing here)."""
    import torch
    return torch.inference_mode()


# ----- out of memory: halve the batch and retry -----------------------------------------
# after this many batches split at a remembered size without running out of memory, one
# batch tries twice that size again (memory another stage held may have been released);
# each failed try doubles the wait, so a real limit costs a retry ever more rarely
GROW_AFTER = 64


def is_oom(exc: BaseException) -> bool:
    """Out of memory on any device: CUDA's own error, or the RuntimeError that MPS ("out of
    memory") and the CPU allocator ("can't allocate memory") raise."""
    import torch
    oom_types = tuple({torch.cuda.OutOfMemoryError, getattr(torch, "OutOfMemoryError",
                                                            torch.cuda.OutOfMemoryError)})
    if isinstance(exc, oom_types):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text)


def free_cuda_cache() -> None:
    """Give cached blocks back so the retry (and the other stages of the process) can use
    them; nothing to do when CUDA was never used."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class _Halving:
    """What one stage learnt about one of its models: the largest batch known to fit."""

    def __init__(self):
        self.fit: int | None = None     # None: no out-of-memory seen, run batches whole
        self.good = 0                   # split batches run without running out since then
        self.grow_after = GROW_AFTER
        self.warned = False


def _halving_state(stage, what: str) -> _Halving:
    return stage.__dict__.setdefault("_oom_halving", {}).setdefault(what, _Halving())


def _concat(parts: list):
    import numpy as np
    import torch
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, tuple):
        return tuple(_concat([p[k] for p in parts]) for k in range(len(first)))
    return [x for p in parts for x in p]


def run_halving(stage, fn: Callable, n: int, *, what: str = "model", indices=None,
                hint: str = "a smaller --batch_size, or --dtype float16 if it runs in float32"):
    """`fn(lo, hi)` on rows lo..hi-1 of a batch of `n`, halving on out of memory.

    `fn` runs on the whole batch; a piece that runs out of memory is split in two halves,
    each run the same way (down to one row), and the results are joined in order (tensors
    and arrays along dim 0, lists and tuples of them element-wise). Each halving is counted
    in the stage's profile (`oom_halvings`, the reason being the size that failed); the size
    that fit is remembered per stage and `what`, so later batches are split up front
    (`oom_split_batches`) and now and then tried larger again. One row still out of memory
    raises the same error type, naming the stage, the item and what to try.
    `indices`: the stream index of each row (for that message)."""
    state = _halving_state(stage, what)
    if n <= 0:
        return fn(0, 0)
    size = n if state.fit is None else min(n, state.fit)
    probing = state.fit is not None and state.good >= state.grow_after and size < n
    if probing:                         # try a larger size again
        size, state.good = min(n, 2 * state.fit), 0
    failed: list[int] = []              # sizes that ran out of memory in this call
    ok: list[int] = []                  # sizes that ran

    def piece(lo: int, hi: int) -> list:
        try:
            result = fn(lo, hi)
        except Exception as exc:
            if not is_oom(exc):
                raise
            if hi - lo == 1:
                raise _single_item_error(stage, exc, lo, n, what, indices, hint) from exc
            # retried after the except block: the error's traceback holds the tensors
            # of the failed call, which the halves need the memory of
        else:
            ok.append(hi - lo)
            return [result]
        failed.append(hi - lo)
        free_cuda_cache()
        stage.ctx.count("oom_halvings", 1, f"{what}: batch of {hi - lo}")
        mid = (lo + hi) // 2
        return piece(lo, mid) + piece(mid, hi)

    parts = []
    for lo in range(0, n, size):
        parts += piece(lo, min(n, lo + size))
    if size < n:
        stage.ctx.count("oom_split_batches")
    if failed:
        smallest = min(failed)
        state.fit = max(s for s in ok if s < smallest)
        if probing:
            state.grow_after *= 2
        state.good = 0
        if not state.warned:
            state.warned = True
            stage.ctx.warn(f"out of memory in {what} on a batch of {max(failed)}: ran it in "
                           f"pieces and runs at most {state.fit} at a time from now on "
                           f"(to avoid the retries: {hint})")
    elif probing:
        state.fit = size
    elif size < n:
        state.good += 1
    return _concat(parts)


def _single_item_error(stage, exc, row, n, what, indices, hint) -> BaseException:
    item = indices[row] if indices is not None else row
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    halved = f", after halving a batch of {n} down to one" if n > 1 else ""
    message = (f"stage '{stage.name}': out of memory in {what} on a single item (item {item})"
               f"{halved}: {first}. Try {hint}, or free the GPU of other work")
    try:
        return type(exc)(message)
    except Exception:                   # an error type that takes other arguments
        return RuntimeError(message)
