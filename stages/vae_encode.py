"""vae_encode: faces to the UNet's latent inputs, on the model device (latents stay there:
the next stages run in the same process). sd-vae-ft-mse, scaled by 0.18215; the
distribution mean by default (deterministic), `sample: true` draws like upstream does.

- MuseTalk v1.5: the 256 crop with its lower half blacked out, then the whole crop as the
  reference, concatenated to [B, 8, 32, 32] (`latents`).
- LatentSync: the aligned face times its mask (masked pixels mid-gray) and the whole aligned
  face, each [F, 4, h, w] (`ls_masked`, `ls_ref`), and the mask at latent size (`ls_mask`),
  for every frame of the window, context frames included.
`convention: auto` follows the graph's UNet stage.
"""
from __future__ import annotations

from graph.stage import Stage

from ._torch import DEVICE_PARAMS, check_device_params, inference
from ._weights import load_shared_vae


class VAEEncode(Stage):
    params = {"convention": "auto", "weights": "", "vae": "", "sample": False, "seed": 0,
              **DEVICE_PARAMS}

    @classmethod
    def bind(cls, params, graph, notes):
        if params["convention"] == "auto":
            from .conventions import graph_conventions
            params["convention"] = graph_conventions(graph)[0]
        return params

    @classmethod
    def validate_params(cls, params):
        problems = check_device_params(params)
        if params["convention"] not in ("auto", "musetalk", "latentsync"):
            problems.append(("convention", "expected auto, musetalk or latentsync"))
        return problems

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
        from .backends import DISABLED
        with inference():
            if self.p["convention"] == "latentsync" and "latentsync" not in DISABLED:
                self._encode_latentsync(batch)
            else:
                batch.data["latents"] = self.vae.encode_musetalk(
                    batch.data["crops"], sample=self.p["sample"], generator=self.generator)
        yield "out", batch

    def _encode_latentsync(self, batch) -> None:
        import torch

        from vision.latentsync_mask import keep_mask, latent_mask
        d = batch.data
        mask = keep_mask(d["aligned"].shape[1], self.info.get("ls_mask") or "")
        pixels = self.vae.to_pixels(d["aligned"])                     # [F, 3, H, W] in [-1, 1]
        keep = torch.tensor(mask, device=pixels.device, dtype=pixels.dtype)
        z = self.vae.encode_pixels(torch.cat([pixels * keep, pixels]), self.p["sample"], self.generator)
        n = pixels.shape[0]
        d["ls_masked"], d["ls_ref"] = z[:n], z[n:]
        small = torch.from_numpy(latent_mask(mask, tuple(z.shape[-2:])))[None]   # [1, 1, h, w]
        d["ls_mask"] = small.to(z.device, z.dtype).expand(n, 1, -1, -1)
