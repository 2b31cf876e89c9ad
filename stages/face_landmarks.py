"""face_landmarks: face landmarks for each face frame, computed once for the stages after it.

- `lm68` (iBUG 68-point order, FAN `2DFAN4`): MuseTalk v1.5's crop box (`face_crop`) and
  LatentSync 1.5's alignment (`face_align`).
- `lm106` (InsightFace `2d106det` of the `buffalo_l` pack, with its detector `det_10g`):
  LatentSync 1.6's alignment, as upstream aligns since April 2025.

`sets: auto` computes what the graph needs: 68 points when it has a MuseTalk crop or a
LatentSync alignment by FAN (`alignment: fan`, the default for 1.5), 106 points for
`alignment: insightface` (the default for 1.6). Files not found: one warning naming them and
where they come from; the crop then uses the detector box, the 1.6 alignment falls back to
FAN, and an alignment without any landmark model estimates points from the box. Frames whose
crop and alignment came from the prepared cache are not looked at again.
"""
from __future__ import annotations

import numpy as np

from lipgraph.graph.stage import Stage

from ._torch import (DEVICE_PARAMS, check_device_params, inference, resolve_device,
                     resolve_dtype, run_halving)
from ._weights import find_optional
from .fields import names

FAN_SOURCE = ("2DFAN4 of the face_alignment project (2DFAN4-cd938726ad.zip; LatentSync's "
              "Hugging Face repo ships it as auxiliary/2DFAN4-cd938726ad.zip)")
INSIGHTFACE_SOURCE = ("InsightFace's buffalo_l pack (det_10g.onnx and 2d106det.onnx; "
                      "`insightface` downloads it to ~/.insightface/models/buffalo_l/)")


class FaceLandmarks(Stage):
    params = {"sets": "auto", "alignment": "auto", "weights": "", "fan": "", "insightface": "",
              "batch_size": 8, **DEVICE_PARAMS}
    reads = names("frame", "box")
    writes = names("lm68", "lm106")

    choices = {"alignment": ("auto", "fan", "insightface")}

    @classmethod
    def bind(cls, params, graph, notes):
        from .unet_model import graph_models, unet_resolution
        models = graph_models(graph)
        if params["alignment"] == "auto":
            params["alignment"] = "insightface" if unet_resolution(graph) == 512 else "fan"
        if params["sets"] == "auto":
            sets = []
            crop = [s for s in graph.values() if s.type == "face_crop"]
            if "musetalk" in models and any(s.params.get("box", "landmarks") == "landmarks" for s in crop):
                sets.append("68")
            if "latentsync" in models:
                sets.append("106" if params["alignment"] == "insightface" else "68")
            params["sets"] = ",".join(sorted(set(sets))) or "none"
        return params

    @classmethod
    def validate_params(cls, params):
        problems = check_device_params(params)
        sets = params["sets"]
        if sets not in ("auto", "none") and not set(sets.split(",")) <= {"68", "106"}:
            problems.append(("sets", f"expected auto, none, 68, 106 or 68,106, got {sets!r}"))
        if params["batch_size"] < 1:
            problems.append(("batch_size", "must be >= 1"))
        return problems

    def open(self):
        sets = set() if self.p["sets"] in ("none", "auto") else set(self.p["sets"].split(","))
        self.held: list = []
        self.fan = self.lm106 = None
        if "106" in sets:
            from lipgraph.models.insightface import INSIGHTFACE_FILES, InsightFaceLandmarker
            found, missing = find_optional(self.p["insightface"] or self.p["weights"],
                                           list(INSIGHTFACE_FILES))
            if missing is None:
                # upstream hands InsightFace its RGB frames where BGR is expected: the same here
                providers = None if self.p["device"] == "auto" else self.p["device"]
                self.lm106 = InsightFaceLandmarker.from_files(
                    found["insightface_detector"], found["insightface_landmarks"],
                    providers=providers, rgb_as_bgr=True)
            else:
                files = " and ".join(INSIGHTFACE_FILES[n] for n in missing.missing)
                self.ctx.warn(f"InsightFace {files} not found: LatentSync 1.6 faces are aligned "
                              f"with 68 FAN points instead. Get {INSIGHTFACE_SOURCE}\n{missing}")
                sets.add("68")
        if "68" in sets:
            from lipgraph.models.landmarks import FANLandmarks, load_fan
            path, missing = self.p["fan"], None
            if not path:
                found, missing = find_optional(self.p["weights"], ["fan_landmarks"])
                path = found.get("fan_landmarks")
            if missing is not None:
                self.ctx.warn(f"FAN landmark weights not found: MuseTalk's face box is the "
                              f"detector's box, not upstream's box from 68 landmarks, and LatentSync's "
                              f"alignment estimates points from the box. Get {FAN_SOURCE}\n{missing}")
            else:
                device = resolve_device(self.p["device"])
                dtype = resolve_dtype(self.p["dtype"], device)
                self.fan = FANLandmarks(load_fan(path, device, dtype), device, dtype,
                                        batch_size=self.p["batch_size"], source=path)
        self.on = self.fan is not None or self.lm106 is not None

    def process(self, item, port):
        if not self.on:
            yield "out", item
            return
        if item.data.get("box") is None:          # a cutaway: release what is held first
            yield from self._release()
            yield "out", item
            return
        self.held.append(item)
        if len(self.held) >= self.p["batch_size"]:
            yield from self._release()

    def on_flush(self, flush, port):
        yield from self._release()
        yield from super().on_flush(flush, port)

    def finish(self):
        return self._release()

    def _release(self):
        if not self.held:
            return
        items, self.held = self.held, []
        todo = [it for it in items if not _prepared(it)]
        if todo:
            frames = [it.data["frame"] for it in todo]
            boxes = [tuple(float(v) for v in it.data["box"][:4]) for it in todo]
            indices = [it.index for it in todo]
            with inference():
                for key, model, what in (("lm68", self.fan, "FAN landmarks"),
                                         ("lm106", self.lm106, "InsightFace landmarks")):
                    if model is None:
                        continue
                    found = run_halving(
                        self, lambda lo, hi, m=model: m.landmarks(frames[lo:hi], boxes[lo:hi]),
                        len(todo), what=what, indices=indices, hint="a smaller landmarks.batch_size")
                    for it, lm in zip(todo, found):
                        it.data[key] = np.asarray(lm, np.float32)
        for it in items:
            yield "out", it


def _prepared(item) -> bool:
    """The prepared cache already holds what the landmarks would be used for."""
    return "face_box" in item.data or "aligned" in item.data
