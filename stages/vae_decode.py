"""vae_decode: predicted latents to 256x256 faces (uint8 RGB), one per batch member."""
from __future__ import annotations

from lipgraph.graph.stage import Stage

from ._torch import DEVICE_PARAMS, inference, run_halving
from ._weights import VAEStageChecks, load_shared_vae
from .fields import names


class VAEDecode(VAEStageChecks, Stage):
    params = {"weights": "", "vae": "", **DEVICE_PARAMS}
    reads = names("pred")
    writes = names("face")

    def open(self):
        self.vae = load_shared_vae(self)

    def process(self, batch, port):
        pred = batch.data.pop("pred")
        with inference():
            faces = run_halving(self, lambda lo, hi: self.vae.decode(pred[lo:hi]), pred.shape[0],
                                what="the VAE decoder", indices=[it.index for it in batch.items])
        batch.data.pop("latents", None)
        for item, face in zip(batch.items, faces):
            item.data["face"] = face
        yield "out", batch
