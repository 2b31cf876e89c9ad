"""Device, dtype and model sharing for the stages that run models.

Stages of one group share a process, so a model needed by two stages (the VAE for encode
and decode) is loaded once per process through `shared_model`.
"""
from __future__ import annotations

import threading
from typing import Callable

_models: dict = {}
_lock = threading.Lock()

DEVICE_PARAMS = {"device": "auto", "dtype": "auto"}


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
    """'auto' is float16 on CUDA and float32 on CPU."""
    import torch
    dtype = (dtype or "auto").strip()
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    if dtype not in table:
        raise ValueError(f"dtype must be auto, float16, bfloat16 or float32, got {dtype!r}")
    return table[dtype]


def check_device_params(params: dict) -> list[tuple[str, str]]:
    problems = []
    dev = str(params.get("device", "auto"))
    if not (dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:")):
        problems.append(("device", f"expected auto, cpu, cuda or cuda:N, got {dev!r}"))
    dt = str(params.get("dtype", "auto"))
    if dt not in ("auto", "float16", "fp16", "half", "bfloat16", "bf16", "float32", "fp32", "float"):
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
