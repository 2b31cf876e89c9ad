"""Catch device-placement mistakes without a GPU.

On CUDA, a tensor made without a device (so on the CPU) that meets the model's tensors
raises "Expected all tensors to be on the same device"; on a CPU-only machine both are CPU
tensors and the mistake goes unseen until a GPU run. `DeviceAudit` keeps a logical device
per tensor while stage code runs:

- on the *device*: the parameters and buffers of the models it adopts, tensors made with a
  device on purpose (`device=...`, `.to(device)`, `.to(other)` of a device tensor, `.cuda()`),
  and whatever is computed from them;
- on the *host*: tensors made without a device (`torch.tensor(...)`, `torch.from_numpy`,
  factories without `device=`) and `.cpu()` results.

An operation that mixes the two raises `DevicePlacementError` naming it, as CUDA would
(a 0-dim host tensor is allowed, as CUDA allows it; copies and indexing are exempt, as on
CUDA); so does `.numpy()` of a device tensor. Host transfers must use `.cpu()`: that is the
convention the audit encodes.

    with DeviceAudit(stage):          # adopts every model the stage holds
        outputs = list(stage.process(batch, "in"))
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

HOST, DEVICE = "host", "device"
# cross-device on CUDA too: copies, and indexing a device tensor with host indices
_MIXING_ALLOWED = {torch.Tensor.copy_, torch.Tensor.__setitem__, torch.Tensor.__getitem__}
_TO_HOST_ONLY = {torch.Tensor.numpy}


class DevicePlacementError(RuntimeError):
    """A host tensor met a device tensor, or a device tensor was read as numpy."""


def _modules(obj, depth: int = 3, seen=None):
    """Every torch module reachable from `obj`'s attributes (a stage, its UNets ...)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth < 0:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        yield obj
        return
    values = obj.values() if isinstance(obj, dict) else (
        obj if isinstance(obj, (list, tuple)) else getattr(obj, "__dict__", {}).values())
    for value in values:
        if isinstance(value, (str, bytes, int, float, torch.Tensor)) or value is None:
            continue
        yield from _modules(value, depth - 1, seen)


class DeviceAudit(TorchFunctionMode):
    def __init__(self, *holders):
        super().__init__()
        # by storage, so views, parameters wrapping a tensor and `param.data = t` share a tag
        self.tags: dict = {}
        self.ops = 0
        self.suspended = 0
        for holder in holders:
            for module in _modules(holder):
                for t in list(module.parameters()) + list(module.buffers()):
                    self._tag(t, DEVICE)

    def __enter__(self):
        # checkpoints are read onto the host (map_location="cpu"), whatever devices the
        # loader names inside: reading them is not tracked, so what they hold is host memory
        self._load = torch.load

        def load(*args, **kwargs):
            self.suspended += 1
            try:
                out = self._load(*args, **kwargs)
            finally:
                self.suspended -= 1
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._tag(t, HOST)
            return out
        torch.load = load
        return super().__enter__()

    def __exit__(self, *exc):
        torch.load = self._load
        return super().__exit__(*exc)

    @staticmethod
    def _key(t: torch.Tensor):
        if t.is_meta or t.layout != torch.strided:
            return None
        return t.untyped_storage().data_ptr() or None

    def _tag(self, t: torch.Tensor, where: str) -> None:
        key = self._key(t)
        if key is not None:
            self.tags[key] = where

    def where(self, t: torch.Tensor) -> str:
        key = self._key(t)
        return HOST if key is None else self.tags.get(key, HOST)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.suspended:
            return func(*args, **kwargs)
        self.ops += 1
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        name = getattr(func, "__qualname__", getattr(func, "__name__", str(func)))
        if func in _TO_HOST_ONLY and tensors and self.where(tensors[0]) == DEVICE:
            raise DevicePlacementError(f"{name}: a device tensor read as numpy (use .cpu() first)")
        target = self._target(func, args, kwargs, bool(tensors))
        if target is None:
            where = [self.where(t) for t in tensors]
            placed = {w for t, w in zip(tensors, where) if t.dim() > 0 or w == DEVICE}
            if len(placed) > 1 and func not in _MIXING_ALLOWED:
                shapes = ", ".join(f"{w} {tuple(t.shape)}" for t, w in zip(tensors, where))
                raise DevicePlacementError(f"{name} mixes host and device tensors ({shapes}): "
                                           "a tensor was made without the stage's device")
            target = DEVICE if DEVICE in placed else HOST
            if func in _MIXING_ALLOWED and tensors:
                target = where[0]
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._tag(t, target)
        return out

    def _target(self, func, args, kwargs, has_tensors: bool):
        """Where the result goes when the call says so itself; None: follow the inputs."""
        if func is torch.Tensor.cpu:
            return HOST
        if func is torch.Tensor.cuda:
            return DEVICE
        if func is torch.Tensor.to:
            for a in list(args[1:]) + [kwargs.get("device"), kwargs.get("other")]:
                if isinstance(a, (str, torch.device)):
                    return DEVICE
                if isinstance(a, torch.Tensor):
                    return self.where(a)
            return None
        if kwargs.get("device") is not None:
            return DEVICE
        if not has_tensors:
            return HOST                  # made from Python values or numpy: the CPU
        return None
