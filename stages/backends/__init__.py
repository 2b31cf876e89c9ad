"""UNet backends of the surgical_unet stage: each loads one model family and turns a batch
prepared in its conventions into predicted latents (`batch.data["pred"]`)."""
from __future__ import annotations

BACKENDS = {
    "musetalk": "stages.backends.musetalk:MuseTalkBackend",
}


def backend_class(name: str):
    import importlib
    if name not in BACKENDS:
        raise ValueError(f"unknown UNet backend {name!r} (choose from {', '.join(BACKENDS)})")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
