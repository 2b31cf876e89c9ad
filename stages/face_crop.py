"""face_crop: MuseTalk v1.5's face box (extra margin below the chin, clamped) and the
256x256 crop the VAE encodes. Cutaways pass through."""
from __future__ import annotations

import numpy as np

from graph.stage import Stage


class FaceCrop(Stage):
    stateless = True
    params = {"extra_margin": 10, "size": 256}

    def process(self, item, port):
        from vision.musetalk_face import crop_face, face_box
        for m in item.members():
            det = m.data.get("box")
            if det is None:
                continue
            frame = m.data["frame"]
            box = face_box(det[:4], frame.shape, self.p["extra_margin"])
            m.data["face_box"] = np.asarray(box, np.int32)
            m.data["crop"] = crop_face(frame, box, self.p["size"])
        yield "out", item
