"""face_crop: MuseTalk v1.5's face box (extra margin below the chin, clamped) and the
256x256 crop the VAE encodes. Cutaways pass through."""
from __future__ import annotations

import numpy as np

from graph.stage import Stage


class FaceCrop(Stage):
    stateless = True
    # enabled auto: when the graph's UNet (or its fallback) is MuseTalk
    params = {"enabled": "auto", "extra_margin": 10, "size": 256}

    @classmethod
    def bind(cls, params, graph, notes):
        if params["enabled"] == "auto":
            from .conventions import graph_conventions
            params["enabled"] = "yes" if "musetalk" in graph_conventions(graph) else "no"
        return params

    @classmethod
    def validate_params(cls, params):
        return [] if params["enabled"] in ("auto", "yes", "no") else [("enabled", "expected auto, yes or no")]

    def process(self, item, port):
        from vision.musetalk_face import crop_face, face_box
        if self.p["enabled"] == "no":
            yield "out", item
            return
        for m in item.members():
            det = m.data.get("box")
            if det is None:
                continue
            frame = m.data["frame"]
            box = face_box(det[:4], frame.shape, self.p["extra_margin"])
            m.data["face_box"] = np.asarray(box, np.int32)
            m.data["crop"] = crop_face(frame, box, self.p["size"])
        yield "out", item
