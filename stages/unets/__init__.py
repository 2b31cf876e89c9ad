"""The surgical_unet stage's UNets, one per model: each loads its model and turns a batch
prepared for it into predicted latents (`batch.data["pred"]`)."""
from __future__ import annotations

UNETS = {
    "musetalk": "lipgraph.stages.unets.musetalk:MuseTalkUNet",
    "latentsync": "lipgraph.stages.unets.latentsync:LatentSyncUNet",
}


def unet_class(name: str):
    """The UNet of a model by name, or any class given as ``module:Class``."""
    import importlib
    target = UNETS.get(name, name if ":" in name else None)
    if target is None:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(UNETS)})")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
