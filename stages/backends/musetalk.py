"""MuseTalk v1.5's UNet: one call at timestep 0 predicts the mouth-region latent from the
masked + reference latents and the audio tokens (with MuseTalk's positional encoding)."""
from __future__ import annotations

import torch

from .._torch import inference, resolve_device, resolve_dtype, shared_model


class MuseTalkBackend:
    name = "musetalk"
    flavour = "musetalk"

    @staticmethod
    def required_weights(params) -> list[str]:
        need = []
        if not params["unet"]:
            need.append("musetalk_unet")
        if not params["unet_config"]:
            need.append("musetalk_unet_config")
        return need

    def __init__(self, stage):
        from models.musetalk_unet import load_musetalk_unet

        from .._weights import resolve
        p = stage.p
        found = resolve(stage, self.required_weights(p)) if self.required_weights(p) else {}
        unet_path = p["unet"] or str(found["musetalk_unet"])
        config = p["unet_config"] or str(found["musetalk_unet_config"])
        self.device = resolve_device(p["device"])
        self.dtype = resolve_dtype(p["dtype"], self.device)
        self.unet = shared_model(("musetalk_unet", unet_path, self.device, str(self.dtype)),
                                 lambda: load_musetalk_unet(unet_path, config, self.device, self.dtype))

    def run(self, batch) -> None:
        latents = batch.data.pop("latents")
        audio = torch.from_numpy(batch.data["audio"])
        with inference():
            batch.data["pred"] = self.unet(latents, audio)
