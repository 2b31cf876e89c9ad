"""MuseTalk v1.5's UNet: one call at timestep 0 predicts the mouth-region latent from the
masked + reference latents and the audio tokens (with MuseTalk's positional encoding).

As LatentSync's fallback it gets windows prepared for LatentSync: it then encodes its own
inputs (the MuseTalk crops and audio tokens the graph also computed) with the shared VAE."""
from __future__ import annotations

from .._torch import inference, resolve_device, resolve_dtype, run_halving, shared_model


class MuseTalkUNet:
    name = "musetalk"

    @staticmethod
    def required_weights(params) -> list[str]:
        files = {"unet": "musetalk_unet", "unet_config": "musetalk_unet_config"}
        return [name for param, name in files.items() if not params[param]]

    def __init__(self, stage):
        from lipgraph.models.musetalk_unet import load_musetalk_unet

        from .._weights import resolve
        self.stage = stage
        p = stage.p
        need = self.required_weights(p)
        found = resolve(stage, need) if need else {}
        unet_path = p["unet"] or str(found["musetalk_unet"])
        config = p["unet_config"] or str(found["musetalk_unet_config"])
        self.device = resolve_device(p["device"])
        self.dtype = resolve_dtype(p["dtype"], self.device)
        self.unet = shared_model(("musetalk_unet", unet_path, self.device, str(self.dtype)),
                                 lambda: load_musetalk_unet(unet_path, config, self.device, self.dtype))

    def run(self, batch) -> None:
        import torch
        d = batch.data
        latents = d.pop("latents", None)
        vae = None
        if latents is None:              # prepared for another model: encode MuseTalk's inputs
            from .._weights import load_shared_vae
            vae = load_shared_vae(self.stage)
        audio = d["audio"]

        def predict(lo, hi):
            z = latents[lo:hi] if vae is None else vae.encode_musetalk(d["crops"][lo:hi])
            return self.unet(z, torch.from_numpy(audio[lo:hi]))
        with inference():
            d["pred"] = run_halving(self.stage, predict, len(batch), what="the MuseTalk UNet",
                                    indices=[it.index for it in batch.items])
        d["model"] = self.name
