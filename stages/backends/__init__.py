"""UNet backends of the surgical_unet stage: each loads one model family and turns a batch
prepared in its conventions into predicted latents (`batch.data["pred"]`)."""
from __future__ import annotations

BACKENDS = {
    "musetalk": "lipgraph.stages.backends.musetalk:MuseTalkBackend",
    "latentsync": "lipgraph.stages.backends.latentsync:LatentSyncBackend",
}


def backend_class(name: str):
    """A backend by name, or any class given as ``module:Class``."""
    import importlib
    target = BACKENDS.get(name, name if ":" in name else None)
    if target is None:
        raise ValueError(f"unknown UNet backend {name!r} (choose from {', '.join(BACKENDS)})")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
