"""vae_encode: faces to the UNet's latent inputs, on the model device (latents stay there:
the next stages run in the same process). sd-vae-ft-mse, scaled by 0.18215; the
distribution mean by default (deterministic), `sample: true` draws like upstream does.

- MuseTalk v1.5: the 256 crop with its lower half blacked out, then the whole crop as the
  reference, concatenated to [B, 8, 32, 32] (`latents`).
- LatentSync: the aligned face times its mask (masked pixels mid-gray) and the whole aligned
  face, each [F, 4, h, w] (`ls_masked`, `ls_ref`), and the mask at latent size (`ls_mask`),
  for every frame of the window, context frames included.
`model: auto` follows the graph's UNet stage.
"""
from __future__ import annotations

from lipgraph.graph.stage import Stage

from ._torch import DEVICE_PARAMS, inference, run_halving
from ._weights import VAEStageChecks, load_shared_vae
from .fields import names, unet_inputs


class VAEEncode(VAEStageChecks, Stage):
    # keep: also leave each frame's latents on the frame (for the prepared cache)
    params = {"model": "auto", "weights": "", "vae": "", "sample": False, "seed": 0,
              "keep": "auto", **DEVICE_PARAMS}
    choices = {"model": ("auto", "musetalk", "latentsync")}
    renamed = {"convention": "model"}
    reads = ()              # crops or aligned faces, by model
    writes = names("latents", "ls_latents", *unet_inputs("latentsync"))

    @classmethod
    def bind(cls, params, graph, notes):
        if params["model"] == "auto":
            from .unet_model import graph_models
            params["model"] = graph_models(graph)[0]
        if params["keep"] == "auto":
            caching = any(s.type == "cache_write" and s.params.get("dir") for s in graph.values())
            params["keep"] = "yes" if caching else "no"
        return params

    def open(self):
        import torch
        self.vae = load_shared_vae(self)
        self.generator = None
        if self.p["sample"]:
            self.generator = torch.Generator(device=self.vae.device).manual_seed(self.p["seed"])

    def process(self, batch, port):
        with inference():
            if self.p["model"] == "latentsync":
                self._encode_latentsync(batch)
            else:
                self._encode_musetalk(batch)
        yield "out", batch

    def _encode_musetalk(self, batch) -> None:
        import torch
        d = batch.data
        cached = d.pop("cached_latents", None)
        if cached is not None:              # every frame's latents came from the cache
                                            # (a partly cached batch is encoded whole)
            d["latents"] = torch.from_numpy(cached).to(self.vae.device, self.vae.dtype)
            return
        crops = d["crops"]
        d["latents"] = run_halving(
            self, lambda lo, hi: self.vae.encode_musetalk(crops[lo:hi], sample=self.p["sample"],
                                                          generator=self.generator),
            len(crops), what="the VAE encoder", indices=[it.index for it in batch.items])
        if self.p["keep"] == "yes":
            for item, z in zip(batch.items, d["latents"].cpu().numpy()):
                item.data["latents"] = z

    def _encode_latentsync(self, batch) -> None:
        import torch

        from lipgraph.vision.latentsync_mask import keep_mask, latent_mask, masked_image
        d = batch.data
        mask = keep_mask(d["aligned"].shape[1], self.info.get("ls_mask") or "")
        n = d["aligned"].shape[0]
        cached = d.pop("cached_ls_latents", None)
        if cached is not None:              # masked + reference latents of every frame cached
            z = torch.from_numpy(cached).to(self.vae.device, self.vae.dtype)
            z = torch.cat([z[:, :4], z[:, 4:]])
        else:
            aligned = d["aligned"]

            def encode(lo, hi):
                # frames are independent in the VAE: a window may be encoded in pieces
                pixels = self.vae.to_pixels(aligned[lo:hi])              # [k, 3, H, W] in [-1, 1]
                z = self.vae.encode_pixels(torch.cat([masked_image(pixels, mask), pixels]),
                                           self.p["sample"], self.generator)
                return z[:hi - lo], z[hi - lo:]
            first = batch.index - d.get("n_context", 0)           # context frames come first
            z = torch.cat(run_halving(self, encode, n, what="the VAE encoder",
                                      indices=range(first, first + n)))
            if self.p["keep"] == "yes":
                pairs = torch.cat([z[:n], z[n:]], dim=1).cpu().numpy()
                c = d.get("n_context", 0)
                for item, zz in zip(batch.items, pairs[c:]):
                    item.data["ls_latents"] = zz
        d["ls_masked"], d["ls_ref"] = z[:n], z[n:]
        small = torch.from_numpy(latent_mask(mask, tuple(z.shape[-2:])))[None]   # [1, 1, h, w]
        d["ls_mask"] = small.to(z.device, z.dtype).expand(n, 1, -1, -1)
