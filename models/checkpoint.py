"""Reading checkpoints: torch or safetensors files loaded safely (no pickled code), state-dict
unwrapping, the strictness check every loader reports mismatches with, and diffusers configs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Container, Mapping


class StateDictMismatchError(ValueError):
    """A checkpoint does not match the model: lists missing, unexpected and mis-shaped keys.

    Models subclass it for their own error name (`S3FDWeightsError`, ...); the report reads the
    same for all of them.
    """


def _short(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_state_dict(expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, object],
                     path: str | os.PathLike, what: str = "model", *, optional: Container[str] = (),
                     error: type[StateDictMismatchError] = StateDictMismatchError) -> None:
    """Raise `error` unless `state_dict` has exactly the `expected` keys/shapes.

    Keys in `optional` may be absent from `state_dict` (entries the model fills itself, such as
    BatchNorm counters old files lack); when present their shape is checked like any other.
    The message names `path`, the `what` it should match and every offending key.
    """
    missing = [k for k in expected if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = []
    for key, shape in expected.items():
        tensor = state_dict.get(key)
        if tensor is None:
            continue
        got = tuple(getattr(tensor, "shape", ()))
        if got != tuple(shape):
            mismatched.append(f"{key}: file {list(got)} vs model {list(shape)}")
    if missing or unexpected or mismatched:
        parts = [f"{path} does not match the {what} ({len(expected)} tensors expected):"]
        if missing:
            parts.append(f"  missing {len(missing)}: {_short(missing)}")
        if unexpected:
            parts.append(f"  unexpected {len(unexpected)}: {_short(unexpected)}")
        if mismatched:
            parts.append(f"  wrong shape {len(mismatched)}: {_short(mismatched, 10)}")
        raise error("\n".join(parts))


def load_strict(model, state: Mapping[str, object], path: str | os.PathLike, what: str,
                error: type[StateDictMismatchError] = StateDictMismatchError, *,
                device="cpu", dtype=None):
    """`model` (usually built on the meta device) with the tensors of `state` assigned after
    `check_state_dict`, on `device` / `dtype`, in eval mode with gradients off.

    BatchNorm `num_batches_tracked` counters may be absent (files saved by old torch versions
    lack them, eval never reads them): they are set to zero. A tensor the file did not fill is
    an error."""
    import torch

    expected = model.state_dict()
    counters = {k for k in expected if k.endswith("num_batches_tracked")}
    check_state_dict({k: tuple(v.shape) for k, v in expected.items()}, state, path, what,
                     optional=counters, error=error)
    zeros = {k: torch.zeros((), dtype=torch.long) for k in counters if k not in state}
    model.load_state_dict({**state, **zeros}, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise error(f"{path}: tensors not filled by the checkpoint: {left[:10]}")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a torch or safetensors checkpoint on the CPU without unpickling code.

    torch files are memory-mapped when their format allows it, so a multi-GB file is not read
    into RAM twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            # Files written in the legacy (pre-zip) torch format cannot be memory-mapped.
            if "mmap" not in str(err):
                raise
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, truncated or not a checkpoint at all
        raise ValueError(f"could not read {path} as a tensor checkpoint: {err}") from err


def read_state_dict(path: str | os.PathLike, what: str = "model",
                    error: type[ValueError] = StateDictMismatchError) -> dict:
    """The name -> tensor mapping of a checkpoint, for every loader alike.

    Unwraps `{"state_dict": ...}` (Lightning, face_alignment) and a DataParallel `module.`
    prefix; a missing file raises FileNotFoundError, anything else that is not a state dict
    raises `error` naming the file and the `what` it should hold.
    """
    import torch

    path = os.fspath(path)
    try:
        obj = load_checkpoint(path)
    except ValueError as exc:
        raise error(f"{path}: cannot read {what} weights: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise error(f"{path}: expected a {what} state dict (name -> tensor), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise error(f"{path}: {what} state dict entries that are not tensors: {bad[:10]}")
    if obj and all(k.startswith("module.") for k in obj):
        return {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_diffusers_config(source, what: str) -> dict:
    """Constructor arguments from a diffusers config (a .json path or a parsed dict), without
    the '_class_name' / '_diffusers_version' bookkeeping keys; `what` names the file in errors."""
    import json
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{what} not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON (expected {what}): {err}") from err
    return {k: v for k, v in raw.items() if not k.startswith("_")}
