"""surgical_unet: the one place the model changes.

`backend` picks the UNet (see `stages/backends/`); every backend takes a batch prepared by
the stages before it and leaves predicted latents for vae_decode.
"""
from __future__ import annotations

from graph.stage import Stage

from ._torch import DEVICE_PARAMS, check_device_params


class SurgicalUNet(Stage):
    params = {"backend": "musetalk", "weights": "", "unet": "", "unet_config": "",
              **DEVICE_PARAMS}

    @classmethod
    def validate_params(cls, params):
        from .backends import BACKENDS
        problems = check_device_params(params)
        if params["backend"] not in BACKENDS:
            problems.append(("backend", f"expected one of {', '.join(BACKENDS)}, got {params['backend']!r}"))
        return problems

    @classmethod
    def required_weights(cls, params):
        from .backends import backend_class
        return backend_class(params["backend"]).required_weights(params)

    def open(self):
        from .backends import backend_class
        self.backend = backend_class(self.p["backend"])(self)

    def process(self, batch, port):
        self.backend.run(batch)
        yield "out", batch
