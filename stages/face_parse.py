"""face_parse: the paste-back mask of each face frame, as MuseTalk v1.5 makes it.

BiSeNet (`face-parse-bisent/79999_iter.pth`) parses a square region 1.5x the face box;
the mask keeps the `mode` classes (`jaw` default, `raw`, `neck`) inside the face box and
below the middle of the region, feathered. `parse_every: N` parses every Nth face frame
of a shot (per face track) and carries the mask over to the frames between (moved with the
face box).
Without parsing weights: a feathered lower-face mask, with a warning.
"""
from __future__ import annotations

import numpy as np

from lipgraph.graph.stage import Stage

from ._torch import (DEVICE_PARAMS, check_device_params, inference, resolve_device,
                     resolve_dtype, run_halving)
from .fields import names


class FaceParse(Stage):
    params = {"weights": "", "parser": "", "mode": "jaw", "parse_every": 1, "expand": 1.5,
              **DEVICE_PARAMS}
    random_weights = {"parser": "parser"}
    reads = names("frame")          # and face_box, on MuseTalk's batches
    writes = names("crop_box", "mask")
    choices = {"mode": ("jaw", "raw", "neck")}

    @classmethod
    def validate_params(cls, params):
        problems = check_device_params(params)
        if params["parse_every"] < 1:
            problems.append(("parse_every", "must be >= 1"))
        return problems

    def open(self):
        from lipgraph.models.bisenet import FaceParser, load_bisenet

        from ._weights import find_optional
        self.parser = None
        path, resnet = self.p["parser"] or None, None
        if path is None:
            found, missing = find_optional(self.p["weights"], ["face_parse"])
            path = found.get("face_parse")
            if path is None:
                self.ctx.warn("face parsing weights not found: blending with a feathered "
                              f"lower-face mask instead of parsing.\n{missing}")
            else:
                resnet = find_optional(self.p["weights"], ["face_parse_resnet"])[0].get("face_parse_resnet")
        if path is not None:
            device = resolve_device(self.p["device"])
            dtype = resolve_dtype(self.p["dtype"], device)
            self.parser = FaceParser(load_bisenet(path, resnet, device=device, dtype=dtype))
        # per face track: its last parsed frame's (mask, face_box, crop_box) as `anchor`,
        # face frames since that parse, its last index
        self.lanes: dict = {}

    def on_flush(self, flush, port):
        self.lanes.clear()        # a cutaway: the next shot is parsed afresh
        return super().on_flush(flush, port)

    def process(self, batch, port):
        if batch.data.get("model", "musetalk") != "musetalk":
            self.lanes.clear()        # LatentSync restores through its own mask
            yield "out", batch
            return
        from lipgraph.vision.musetalk_face import blend_mask, crop_padded, expanded_crop_box, reuse_mask
        items = list(batch.members())
        # which frames to parse: the first of each shot, then every parse_every-th
        fresh = []
        for item in items:
            box = item.data["face_box"]
            item.data["crop_box"] = np.asarray(
                expanded_crop_box(box, item.data["frame"].shape, self.p["expand"]), np.int32)
            lane = self.lanes.setdefault(item.data.get("face_id"),
                                         {"anchor": None, "since": 0, "prev": None, "have": False})
            gap = lane["prev"] is None or item.index != lane["prev"] + 1
            lane["prev"] = item.index
            lane["have"] = lane["have"] or lane["anchor"] is not None
            if "mask" in item.data:         # from the prepared cache
                lane["since"], lane["have"] = 1, True
                continue
            if gap or not lane["have"] or lane["since"] >= self.p["parse_every"]:
                fresh.append(item)
                lane["since"] = 0
                lane["have"] = True
            lane["since"] += 1
        maps = [None] * len(fresh)
        if self.parser is not None and fresh:
            crops = [crop_padded(it.data["frame"], it.data["crop_box"]) for it in fresh]
            with inference():
                maps = run_halving(self, lambda lo, hi: self.parser.parse(crops[lo:hi]), len(crops),
                                   what="the face parser", indices=[it.index for it in fresh])
        for it, parsing in zip(fresh, maps):
            it.data["mask"] = blend_mask(parsing, it.data["face_box"], it.data["crop_box"],
                                         self.p["mode"])
        self.ctx.count("parsed", len(fresh))
        # the others carry the mask of the last parsed frame before them
        fresh_ids = {id(it) for it in fresh}
        for item in items:
            lane = self.lanes[item.data.get("face_id")]
            if id(item) in fresh_ids or ("mask" in item.data and item.data.get("cached")):
                lane["anchor"] = (item.data["mask"], item.data["face_box"], item.data["crop_box"])
            else:
                mask, box, crop_box = lane["anchor"]
                item.data["mask"] = reuse_mask(mask, box, crop_box, item.data["face_box"],
                                               item.data["crop_box"])
        yield "out", batch
