"""blend: paste each generated face back into its frame, the way of the model that
made it (the batch says which):

- MuseTalk v1.5: the 256 face resized into the face box, blended through the parsing mask.
- LatentSync: the decoded face keeps the aligned original outside LatentSync's mask, is
  warped back from the aligned box into the frame and blended with a soft edge.

Pixels outside the pasted region keep the original frame's values exactly. Each frame also
records `edit`, the box holding every pixel that may have changed (for the mux's sidecar).
Stateless: may be replicated with `workers: N`.
"""
from __future__ import annotations

import numpy as np

from lipgraph.graph.stage import Stage

from .fields import WORKING, names


class Blend(Stage):
    stateless = True
    params = {}
    reads = names("frame", "face")
    writes = names("model", "edit", "restore")

    def process(self, batch, port):
        model = batch.data.get("model", "musetalk")
        paste = self._latentsync if model == "latentsync" else self._musetalk
        for item in batch.members():
            item.data["model"] = model
            paste(item.data)
            for key in WORKING:      # lighter messages downstream
                item.data.pop(key, None)
        batch.data.clear()
        yield "out", batch

    @staticmethod
    def _musetalk(d) -> None:
        from lipgraph.vision.musetalk_face import paste_face
        d["frame"] = paste_face(d["frame"], d["face"], d["face_box"], d["crop_box"], d["mask"])
        ys, xs = np.nonzero(d["mask"] > 0)
        if len(ys):
            cx, cy = int(d["crop_box"][0]), int(d["crop_box"][1])
            x1, y1, x2, y2 = (int(v) for v in d["face_box"])
            h, w = d["frame"].shape[:2]
            d["edit"] = [max(cx + int(xs.min()), x1, 0), max(cy + int(ys.min()), y1, 0),
                         min(cx + int(xs.max()) + 1, x2, w), min(cy + int(ys.max()) + 1, y2, h)]

    def _latentsync(self, d) -> None:
        import cv2

        from lipgraph.vision.latentsync_align import face_box_size, paste_region, restore_face
        from lipgraph.vision.latentsync_mask import keep_mask, keep_surroundings
        res = d["aligned"].shape[0]
        keep = keep_mask(res, self.info.get("ls_mask") or "")
        # in 0..255 floats (both are, so no range conversion happens)
        face = keep_surroundings(d["face"].astype(np.float32), d["aligned"].astype(np.float32), keep)
        # 1.6 (InsightFace) warps bilinearly both ways, 1.5 with Lanczos
        interp = cv2.INTER_LINEAR if d.get("align") == "insightface" else cv2.INTER_LANCZOS4
        d["frame"] = restore_face(d["frame"], face, d["affine"], res, interpolation=interp)
        h, w = d["frame"].shape[:2]
        inverse = cv2.invertAffineTransform(np.asarray(d["affine"], np.float64))
        d["edit"] = list(paste_region(inverse, *face_box_size(res), w, h))
        # what it takes to redraw the mouth region in the frame (the sidecar's `restore`)
        d["restore"] = {"affine": np.asarray(d["affine"], np.float64).round(6).tolist(), "res": res,
                        "mask": self.info.get("ls_mask") or ""}
