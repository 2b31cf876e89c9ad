"""blend: paste each generated face back into its frame through its mask (MuseTalk v1.5's
paste-back). Pixels outside the mask keep the original frame's values exactly. Stateless:
may be replicated with `workers: N`."""
from __future__ import annotations

from graph.stage import Stage

# per-frame working data that is not needed after blending (lighter messages downstream)
_DROP = ("crop", "face", "mask", "audio", "crop_box")


class Blend(Stage):
    stateless = True
    params = {}

    def process(self, batch, port):
        from vision.musetalk_face import paste_face
        for item in batch.members():
            d = item.data
            d["frame"] = paste_face(d["frame"], d["face"], d["face_box"], d["crop_box"], d["mask"])
            for key in _DROP:
                d.pop(key, None)
        batch.data.clear()
        yield "out", batch
