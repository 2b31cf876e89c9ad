"""face_align: LatentSync's face convention for each face frame.

68-point landmarks (FAN, batched; without its weights, an estimate from the detection box,
with a warning), a similarity transform of three landmark points onto LatentSync's template,
smoothed across consecutive frames of a shot (reset at every cutaway or gap), and the face
warped into its box (gray fill) and resized to a square of `resolution` (256 for v1.5, 512
for v1.6). Adds `aligned` (the square face) and `affine` (frame -> box) to each face frame.

It also tells the stages after it which mask to use (`Info`: `ls_mask`).
With `enabled: false` (the graph's UNet is MuseTalk only) frames pass through untouched.
"""
from __future__ import annotations

import numpy as np

from graph.stage import Stage

from ._torch import DEVICE_PARAMS, check_device_params, inference, resolve_device, resolve_dtype


class FaceAlign(Stage):
    params = {"enabled": "auto", "weights": "", "landmarks": "", "resolution": 0, "mask": "",
              "batch_size": 8, "smooth": True, **DEVICE_PARAMS}

    @classmethod
    def bind(cls, params, graph, notes):
        from .conventions import graph_conventions, unet_resolution
        conv = graph_conventions(graph)
        if params["enabled"] == "auto":
            params["enabled"] = "yes" if "latentsync" in conv else "no"
        if not params["resolution"]:
            params["resolution"] = unet_resolution(graph)
        return params

    @classmethod
    def validate_params(cls, params):
        problems = check_device_params(params)
        if params["enabled"] not in ("auto", "yes", "no"):
            problems.append(("enabled", "expected auto, yes or no"))
        if params["resolution"] not in (0, 256, 512):
            problems.append(("resolution", "expected 256 (LatentSync 1.5) or 512 (1.6)"))
        return problems

    def open(self):
        self.on = self.p["enabled"] == "yes"
        self.held: list = []
        if not self.on:
            return
        from models.landmarks import build_landmarker
        from vision.latentsync_align import AlignmentSmoother
        device = resolve_device(self.p["device"])
        self.landmarker, warning = build_landmarker(
            self.p["weights"] or None, device, resolve_dtype(self.p["dtype"], device),
            fan_path=self.p["landmarks"] or None)
        if warning:
            self.ctx.warn(warning)
        self.smoother = AlignmentSmoother() if self.p["smooth"] else None
        self.prev_index = None

    def on_info(self, info, port):
        if self.on:
            info.data.update(ls_mask=self.p["mask"])
        return super().on_info(info, port)

    def process(self, item, port):
        if not self.on:
            yield "out", item
            return
        if item.data.get("box") is None:          # a cutaway: release the shot so far
            yield from self._release()
            self._cut()
            yield "out", item
            return
        if "aligned" in item.data:                # aligned already (prepared cache)
            yield from self._release()
            yield "out", item
            return
        self.held.append(item)
        if len(self.held) >= self.p["batch_size"]:
            yield from self._release()

    def on_flush(self, flush, port):
        yield from self._release()
        self._cut()
        yield from super().on_flush(flush, port)

    def finish(self):
        return self._release()

    def _cut(self) -> None:
        if self.on and self.smoother is not None:
            self.smoother.reset()
        self.prev_index = None

    def _release(self):
        if not self.held:
            return
        from vision.latentsync_align import align_face, estimate_affine
        items, self.held = self.held, []
        with inference():
            marks = self.landmarker.landmarks([it.data["frame"] for it in items],
                                              [tuple(float(v) for v in it.data["box"][:4]) for it in items])
        res = self.p["resolution"] or 256
        for it, lm in zip(items, marks):
            if self.prev_index is not None and it.index != self.prev_index + 1:
                self._cut()                        # a gap in the shot: do not smooth across it
            self.prev_index = it.index
            affine = estimate_affine(lm, res, self.smoother)
            it.data["affine"] = np.asarray(affine, np.float64)
            it.data["aligned"] = align_face(it.data["frame"], affine, res)
            yield "out", it
