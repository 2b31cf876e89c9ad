"""Which model conventions a graph needs, decided by its surgical UNet stage.

Each UNet was trained on its own inputs: MuseTalk on a plain face crop and all Whisper hidden
states; LatentSync on an aligned face with its own mask and the last hidden state before the
final LayerNorm. Stages whose params say `auto` take what the graph's `surgical_unet` stage
needs (its backend, plus MuseTalk when it falls back to it), so switching the UNet is one
param: `--set unet.backend=latentsync`.
"""
from __future__ import annotations


def unet_params(graph) -> dict | None:
    """Params of the graph's surgical_unet stage (None if it has none)."""
    for spec in graph.values():
        if spec.type == "surgical_unet":
            return spec.params
    return None


def graph_conventions(graph) -> list[str]:
    """Conventions in priority order: the backend's, then its fallback's."""
    p = unet_params(graph)
    if p is None:
        return ["musetalk"]
    from .backends import backend_class
    conv = [backend_class(p["backend"]).convention]
    if p.get("fallback") == "musetalk" and "musetalk" not in conv:
        conv.append("musetalk")
    return conv


def unet_resolution(graph) -> int:
    """Face size of the LatentSync UNet: 256 for v1.5, 512 for v1.6."""
    p = unet_params(graph) or {}
    return 512 if str(p.get("version", "1.5")) == "1.6" else 256
