"""cache_read / cache_write: reuse the video-side work when the same footage is dubbed again.

With `dir` set (`--cache DIR`), `cache_read` (right after decoding) attaches what an earlier
run stored for each source frame: face box (or none: a cutaway), crop boxes, VAE latents,
blend mask, LatentSync's aligned face and affine. The stages after it skip work whose result
is already there, so a re-dub runs only the audio features, the UNet, decode, blend and mux.
`cache_write` (one on the face path, one on the cutaway path: two lanes never wait on each
other) stores what was computed for frames the store did not have.

The store is keyed by the video's identity and every param (and model file) that shapes the
video-side work; see `stages/_prepared.py`. Without `dir` both stages pass frames through.
"""
from __future__ import annotations

import hashlib
import json
import os

from lipgraph.graph.stage import Stage

from .fields import names

# stage types whose params shape the stored work
_VIDEO_SIDE = ("face_detect", "face_landmarks", "face_crop", "face_align", "vae_encode", "face_parse")
_NOT_SHAPING = {"batch_size"}
_MODEL_PARAMS = ("weights", "vae", "parser", "fan", "insightface", "mask")


def cache_key(graph: dict) -> tuple[str, str, str]:
    """(video path, video id, params key) for the graph being bound: the key digests the
    video's identity and every param and model file that shapes the video-side work."""
    from lipgraph.media.identity import file_identity
    video = next(s.params["path"] for s in graph.values() if s.type == "video_source")
    ident = file_identity(video)
    shaping = {}
    for name, spec in sorted(graph.items()):
        if spec.type in _VIDEO_SIDE:
            params = {k: v for k, v in sorted(spec.params.items()) if k not in _NOT_SHAPING}
            for k in _MODEL_PARAMS:         # a model file's identity, not only its name
                path = params.get(k)
                if path and os.path.exists(path):
                    st = os.stat(path)
                    params[k] = [path, st.st_size, st.st_mtime_ns]
            shaping[name] = [spec.type, params]
    meta = {"video": ident, "stages": shaping}
    video_id = hashlib.sha256(ident["path"].encode()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return video, video_id, key


class _CacheStage(Stage):
    params = {"dir": "", "key": "", "video_id": "", "video": ""}
    bind_order = 1      # after the stages whose params it digests
    # a cache hit restores fields their own stages write (those stages then skip the work)
    reads = writes = ()

    @classmethod
    def bind(cls, params, graph, notes):
        if params["dir"] and any(_several_faces(s.params["face"]) for s in graph.values()
                                 if s.type == "face_detect"):
            raise ValueError("the prepared-video cache keeps one face per frame: dub several "
                             "faces of a frame (--dub, face: ID+ID) without --cache")
        if params["dir"] and not params["key"]:
            params["video"], params["video_id"], params["key"] = cache_key(graph)
        return params

    def open(self):
        self.store = None
        if not self.p["dir"]:
            return
        from lipgraph.media.probe import probe_video

        from ._prepared import PreparedStore
        from ._torch import shared_model

        def make():         # once per process: the stages of one store share it
            info = probe_video(self.p["video"])
            # one slot per source frame (room to spare where the count is an estimate)
            frames = info.frame_count if info.frame_count_exact else int(info.frame_count * 1.2) + 100
            meta = {"video": os.path.abspath(self.p["video"])}
            return PreparedStore(self.p["dir"], self.p["video_id"], self.p["key"], frames, meta)
        self.store = shared_model(("prepared", os.path.abspath(self.p["dir"]), self.p["key"]), make)


class CacheRead(_CacheStage):
    writes = names("cached")

    def process(self, item, port):
        if self.store is not None:
            from ._prepared import restore
            record = self.store.get(item.data.get("src_index", item.index))
            if record is not None:
                restore(item.data, record)
                item.data["cached"] = True
                self.ctx.count("cache_hits")
            else:
                self.ctx.count("cache_misses")
        yield "out", item

    def finish(self):
        if self.store is not None and self.store.damaged:
            self.ctx.count("cache_damaged", self.store.damaged,
                           "record failed its check: recomputed")
        return ()


class CacheWrite(_CacheStage):
    """`lane: faces` (after face_parse) or `cutaways` (on the bypass); the faces lane also
    reports the store's size in the profile (`cache_bytes`)."""
    params = {**_CacheStage.params, "lane": "faces"}

    def process(self, msg, port):
        if self.store is not None:
            from ._prepared import record_of
            for item in msg.members():
                if not item.data.get("cached") and not item.data.get("preroll"):
                    self.store.put(item.data.get("src_index", item.index), record_of(item.data))
                    self.ctx.count("cache_written")
        yield "out", msg

    def finish(self):
        if self.store is not None and self.p["lane"] == "faces":
            self.ctx.count("cache_bytes", self.store.size_bytes())
        return ()


def _several_faces(face) -> bool:
    """face: ID+ID dubs every listed face of a frame (an invalid value is face_detect's to report)."""
    from lipgraph.vision.face_choice import parse_choice
    try:
        return parse_choice(face)[0] == "all"
    except ValueError:
        return False
