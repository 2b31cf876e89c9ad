"""face_align: LatentSync's aligned face for each face frame.

Three points from the landmarks `face_landmarks` computed are mapped by a similarity
transform onto LatentSync's template, and the face is warped into its 3:4 box (gray fill)
and resized to a square of `resolution` (256 for v1.5, 512 for v1.6):
- InsightFace's 106 points (`lm106`, 1.6): brow and nose means, a bilinear warp, no landmark
  smoothing, the translation bias smoothed across frames (upstream since April 2025);
- 68 points (`lm68`, FAN, 1.5): brow and nose means, landmark and translation smoothing, a
  Lanczos warp (the 1.5 release); without any landmarks, points estimated from the box.
Smoothing restarts at every cutaway or gap, one smoother per face track. Adds `aligned` (the
square face), `affine` (frame -> box) and `align` (which alignment, for the paste-back) to
each face frame.

The mask: `mask: PATH`, else the official `latentsync/utils/mask.png` when `weights` is a
LatentSync checkout (or its `checkpoints/` folder), else the same mask drawn by code. It is
passed on to the stages after it (`Info`: `ls_mask`).
With `enabled: no` (the graph's UNet is MuseTalk only) frames pass through untouched.
"""
from __future__ import annotations

import numpy as np

from lipgraph.graph.items import Info
from lipgraph.graph.stage import Stage

from .fields import names


class FaceAlign(Stage):
    params = {"enabled": "auto", "weights": "", "resolution": 0, "mask": "", "smooth": True}
    reads = names("frame", "box")
    writes = names("aligned", "affine", "align")

    choices = {"enabled": ("auto", "yes", "no"), "resolution": (0, 256, 512)}

    @classmethod
    def bind(cls, params, graph, notes):
        from .unet_model import graph_models, unet_resolution
        if params["enabled"] == "auto":
            params["enabled"] = "yes" if "latentsync" in graph_models(graph) else "no"
        if not params["resolution"]:
            params["resolution"] = unet_resolution(graph)
        if not params["mask"] and params["enabled"] == "yes":
            from lipgraph.vision.latentsync_mask import find_official_mask
            params["mask"] = find_official_mask(params["weights"])
        return params

    def open(self):
        self.on = self.p["enabled"] == "yes"
        self.lanes: dict = {}     # face track id -> [smoother, last index]: one per person

    def on_info(self, info, port):
        if self.on:     # a new message: the one received may be another stage's too
            info = Info(info.data, ls_mask=self.p["mask"])
        return super().on_info(info, port)

    def process(self, item, port):
        if self.on:
            if item.data.get("box") is None:          # a cutaway: the shot ends
                self.lanes.clear()
            elif "aligned" not in item.data:          # else aligned already (prepared cache)
                self._align(item.data, self._smoother(item))
        yield "out", item

    def on_flush(self, flush, port):
        self.lanes.clear()
        yield from super().on_flush(flush, port)

    def _smoother(self, item):
        """The smoother of the item's face track, new after a gap in that track's frames."""
        if not self.p["smooth"]:
            return None
        from lipgraph.vision.latentsync_align import AlignmentSmoother
        lane = self.lanes.get(item.data.get("face_id"))
        if lane is None or item.index != lane[1] + 1:     # do not smooth across a gap
            lane = self.lanes[item.data.get("face_id")] = [AlignmentSmoother(), item.index]
        lane[1] = item.index
        return lane[0]

    def _align(self, d: dict, smoother) -> None:
        import cv2

        from lipgraph.models.landmarks import box_landmarks
        from lipgraph.vision.latentsync_align import align_face, estimate_affine, estimate_affine_106
        res = self.p["resolution"]
        if d.get("lm106") is not None:
            affine = estimate_affine_106(d["lm106"], res, smoother)
            d["align"], interp = "insightface", cv2.INTER_LINEAR
        else:
            lm = d.get("lm68")
            if lm is None:
                lm = box_landmarks(tuple(float(v) for v in d["box"][:4]))
            affine = estimate_affine(lm, res, smoother)
            d["align"], interp = "fan", cv2.INTER_LANCZOS4
        d["affine"] = np.asarray(affine, np.float64)
        d["aligned"] = align_face(d["frame"], affine, res, interpolation=interp)
