"""LatentSync 1.5 (256 px) / 1.6 (512 px): DDIM over a window of up to 24 consecutive face
frames of one shot, with audio classifier-free guidance and optional DeepCache.

The window arrives encoded by vae_encode (masked and reference latents of the aligned faces,
the mask at latent size), context frames first; only the window's new frames' latents go on
to vae_decode. The initial noise is one seeded map shared by every frame of the run."""
from __future__ import annotations

from .._torch import inference, resolve_device, resolve_dtype, shared_model
from ..fields import unet_inputs

MAX_FRAMES = 24            # the motion modules' positional encoding length


class LatentSyncUNet:
    name = "latentsync"

    @staticmethod
    def required_weights(params) -> list[str]:
        if params["unet3d"]:
            return []
        return ["latentsync16_unet" if str(params["version"]) == "1.6" else "latentsync15_unet"]

    def __init__(self, stage):
        from lipgraph.models.latentsync.config import LATENTSYNC_STAGE2_CONFIG
        from lipgraph.models.latentsync_sampler import LatentSyncSampler
        from lipgraph.models.latentsync_unet3d import load_latentsync_unet

        from .._weights import resolve
        p = stage.p
        need = self.required_weights(p)
        path = p["unet3d"] or str(resolve(stage, need)[need[0]])
        config = p["unet3d_config"] or LATENTSYNC_STAGE2_CONFIG
        self.device = resolve_device(p["device"])
        self.dtype = resolve_dtype(p["dtype"], self.device)
        unet = shared_model(("latentsync_unet", path, self.device, str(self.dtype)),
                            lambda: load_latentsync_unet(path, config, self.device, self.dtype))
        self.sampler = LatentSyncSampler(unet, p["steps"], p["guidance"], p["cache_interval"])
        self.seed = p["seed"]
        self.noise = None

    def _noise(self, shape):
        import torch
        if self.noise is None or tuple(self.noise.shape) != tuple(shape):
            g = torch.Generator(device="cpu").manual_seed(self.seed)
            self.noise = torch.randn(shape, generator=g).to(self.device)
        return self.noise

    def run(self, batch) -> None:
        import torch
        d = batch.data
        if "ls_masked" not in d:
            raise RuntimeError("window not prepared for LatentSync (no ls_masked latents)")
        frames = d["ls_masked"].shape[0]
        if frames > MAX_FRAMES:
            raise ValueError(f"window of {frames} frames exceeds LatentSync's limit of {MAX_FRAMES}")
        with inference():
            noise = self._noise(d["ls_masked"].shape[1:])
            audio = torch.from_numpy(d["audio_ls"])
            latents = self.sampler.sample(noise, d["ls_mask"], d["ls_masked"], d["ls_ref"], audio)
        if not bool(torch.isfinite(latents).all()):
            raise FloatingPointError("non-finite values in the LatentSync output")
        d["pred"] = latents[d.get("n_context", 0):]
        d["model"] = self.name
        for key in unet_inputs(self.name):
            d.pop(key, None)
