"""face_join: the faces of one frame, dubbed side by side, pasted back into one frame.

When several faces of a frame are dubbed (face: ID+ID, one dub per speaker), face_detect sends
the frame on as one item per face (same index, `face_slot` of `face_slots`) and blend pastes
each face into its own copy of the frame. This stage takes, for every frame, the first face's
copy and copies each other face's `edit` box (every pixel its paste may have changed) into it,
so the frame carries all its faces and every pixel outside them is the original. Where two
faces' edit boxes overlap, the later face's box wins there. The frame records `faces` (id,
box, edit box, model, LatentSync's restore data of each face), for the sidecar.

Frames come out one by one in index order; a frame is held until all its faces arrive (with
LatentSync each face makes its own windows, so up to a window per face is held). A frame with
one face passes through untouched, batches stay whole when none of their frames has several.
"""
from __future__ import annotations

import numpy as np

from lipgraph.graph.items import Batch, Item
from lipgraph.graph.stage import Stage

from .fields import names


def face_record(d: dict) -> dict | None:
    """One dubbed face as the sidecar lists it: id, face box, edit box, model, restore."""
    box = d.get("face_box", d.get("box"))
    if box is None:
        return None
    record = {"id": d.get("face_id"), "face": [int(round(float(v))) for v in list(box)[:4]],
              "edit": d.get("edit"), "model": d.get("model")}
    if d.get("restore"):
        record["restore"] = d["restore"]
    return record


class FaceJoin(Stage):
    params = {}
    reads = names("frame", "face_slot", "face_slots", "edit")
    writes = names("faces")

    def open(self):
        self.held: dict[int, list[Item]] = {}     # index -> the faces of that frame so far

    def process(self, msg, port):
        members = list(msg.members()) if isinstance(msg, Batch) else [msg]
        if not self.held and not any("face_slots" in m.data for m in members):
            yield "out", msg                      # one face per frame: nothing to join
            return
        for item in members:
            self.held.setdefault(item.index, []).append(item)
        yield from self._complete()

    def on_flush(self, flush, port):
        yield from self._complete()
        yield from super().on_flush(flush, port)

    def finish(self):
        if self.held:
            waiting = {i: f"{len(p)} of {p[0].data.get('face_slots', 1)}" for i, p in self.held.items()}
            raise RuntimeError(f"frames still wait for some of their faces at the end: {waiting}")
        return ()

    def _complete(self):
        """Emit the frames whose faces have all arrived, in index order."""
        while self.held:
            index = min(self.held)
            parts = self.held[index]
            if len(parts) < parts[0].data.get("face_slots", 1):
                return
            del self.held[index]
            yield "out", self._join(sorted(parts, key=lambda p: p.data.get("face_slot", 0)))

    def _join(self, parts: list[Item]) -> Item:
        base = parts[0]
        frame = base.data["frame"]
        if len(parts) > 1 and not frame.flags.writeable:
            frame = base.data["frame"] = np.array(frame)
        for part in parts[1:]:
            edit, other = part.data.get("edit"), part.data["frame"]
            if edit is not None and other is not frame:
                x1, y1, x2, y2 = (int(v) for v in edit)
                frame[y1:y2, x1:x2] = other[y1:y2, x1:x2]
        if len(parts) > 1:
            base.data["faces"] = [face_record(p.data) for p in parts]
            self.ctx.count("frames_with_several_faces")
        for key in ("face_slot", "face_slots"):
            base.data.pop(key, None)
        return base
