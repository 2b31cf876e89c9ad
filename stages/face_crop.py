"""face_crop: MuseTalk v1.5's face box and the 256x256 crop the VAE encodes.

The box is upstream's: built from the 68 landmarks (`lm68`, from `face_landmarks`) so that
the nose point sits on the crop's middle row, where the VAE mask cuts; the detector box
where that box is invalid or no landmarks were computed (`box: detector` always uses it).
Then `extra_margin` px are added below the chin and the box is clamped to the frame.
Cutaways pass through.
"""
from __future__ import annotations

import numpy as np

from lipgraph.graph.stage import Stage

from .unet_model import bind_auto
from .fields import names


class FaceCrop(Stage):
    stateless = True
    # enabled auto: when the graph's UNet (or its fallback) is MuseTalk
    params = {"enabled": "auto", "box": "landmarks", "extra_margin": 10, "size": 256}
    reads = names("frame", "box")
    writes = names("face_box", "crop")

    choices = {"enabled": ("auto", "yes", "no"), "box": ("landmarks", "detector")}
    bind = bind_auto(enabled=lambda models: "yes" if "musetalk" in models else "no")

    def process(self, item, port):
        from lipgraph.vision.musetalk_face import crop_face, face_box, landmark_box
        if self.p["enabled"] == "no":
            yield "out", item
            return
        for m in item.members():
            det = m.data.get("box")
            if det is None:
                continue
            frame = m.data["frame"]
            if "face_box" in m.data:           # from the prepared cache
                box = tuple(int(v) for v in m.data["face_box"])
            else:
                source = det[:4]
                lm = m.data.get("lm68") if self.p["box"] == "landmarks" else None
                if lm is not None:
                    source, from_landmarks = landmark_box(lm, det[:4])
                    self.ctx.count("box_from_landmarks" if from_landmarks else "box_from_detector")
                box = face_box(source, frame.shape, self.p["extra_margin"])
                m.data["face_box"] = np.asarray(box, np.int32)
            m.data["crop"] = crop_face(frame, box, self.p["size"])
        yield "out", item
