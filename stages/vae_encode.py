"""vae_encode: face crops to the UNet's latent input, on the model device.

MuseTalk v1.5: the crop with its lower half blacked out, then the whole crop as the
reference, each through sd-vae-ft-mse (scaled by 0.18215), concatenated to [B, 8, 32, 32].
The distribution mean by default (deterministic); `sample: true` draws like upstream does.
Latents stay on the device: the next stages run in the same process.
"""
from __future__ import annotations

from graph.stage import Stage

from ._torch import DEVICE_PARAMS, check_device_params, inference
from ._weights import load_shared_vae


class VAEEncode(Stage):
    params = {"weights": "", "vae": "", "sample": False, "seed": 0, **DEVICE_PARAMS}

    @classmethod
    def validate_params(cls, params):
        return check_device_params(params)

    @classmethod
    def required_weights(cls, params):
        return [] if params["vae"] else ["sd_vae_config", "sd_vae_weights"]

    def open(self):
        import torch
        self.vae = load_shared_vae(self)
        self.generator = None
        if self.p["sample"]:
            self.generator = torch.Generator(device=self.vae.device).manual_seed(self.p["seed"])

    def process(self, batch, port):
        with inference():
            batch.data["latents"] = self.vae.encode_musetalk(
                batch.data["crops"], sample=self.p["sample"], generator=self.generator)
        yield "out", batch
