"""vae_decode: predicted latents to 256x256 faces (uint8 RGB), one per batch member."""
from __future__ import annotations

from lipgraph.graph.stage import Stage

from ._torch import DEVICE_PARAMS, check_device_params, inference, run_halving
from ._weights import load_shared_vae, vae_required_weights
from .fields import names


class VAEDecode(Stage):
    params = {"weights": "", "vae": "", **DEVICE_PARAMS}
    # param -> the file of the random models it takes (models/random_weights.py)
    random_weights = {"vae": "vae"}
    reads = names("pred")
    writes = names("face")

    @classmethod
    def validate_params(cls, params):
        return check_device_params(params)

    @classmethod
    def required_weights(cls, params):
        return vae_required_weights(params)

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
