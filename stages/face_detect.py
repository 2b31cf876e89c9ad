"""face_detect: one face box per frame, or None for a cutaway.

S3FD (`s3fd-619a316812.pth`, looked up under --weights and the torch hub cache), batched,
at full resolution as upstream runs it (`max_side: N` downscales to N px for speed; see
docs/fidelity.md for what that changes), fed RGB or BGR as the graph's model was prepared
(`channel_order: auto`: RGB for MuseTalk, whose copy of the detector gets RGB frames, BGR for
LatentSync, whose face_alignment detector gets BGR); without its weights, OpenCV's Haar
cascade (on frames downscaled to 640 px), with a warning.

Detection dominates upstream's run time, so `detect_every: N` detects every Nth frame and
interpolates the boxes between two detections of the same face; where a face appears,
disappears or jumps between two detections, the frames between are detected too.
`detect_every: auto` detects every 8th frame and on both sides of every shot change (a
cheap comparison of 32 x 18 grey thumbnails of consecutive frames), so a face that comes
with a cut is found on its first frame and boxes are never interpolated across a cut.
Several faces: `face` chooses whom to dub (vision/face_choice.py): `largest` (the face that
continues the current one, else the largest), a point of the frame, or track ids from
`python -m lipgraph.tools.faces` (then every frame is detected and tracked as the listing
does, so the ids are the listing's), or `speaker`: the track whose mouth moves with the
video's own speech (vision/speaker.py); with SyncNet's weights (`syncnet: auto` finds
syncnet_v2.model as the weights table says, or a path; `off`: never) the tracks are scored by
SyncNet's audio-visual confidence instead of mouth motion (vision/speaker_syncnet.py). A frame
without the chosen face is a cutaway.
`ID+ID...` dubs every listed face present: the frame leaves as one item per face (same index
and frame, `face_slot` / `face_slots`), for face_join to paste back together.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from lipgraph.graph.items import Item
from lipgraph.graph.stage import Stage
from lipgraph.vision.face_choice import FaceChoice, parse_choice, tracks_ids
from lipgraph.vision.shots import ShotCuts

from ._torch import (DEVICE_PARAMS, check_device_params, inference, resolve_device,
                     resolve_dtype, run_halving, shared_model)
from .unet_model import bind_auto
from .fields import names

TRACK_IOU = 0.3     # two boxes this similar are the same face (interpolation is safe)
AUTO_EVERY = 8      # detect_every: auto detects at least this often


class FaceDetect(Stage):
    params = {"detector": "auto", "weights": "", "detect_every": "1", "batch_size": 8,
              "max_side": 0, "channel_order": "auto", "score_threshold": 0.5,
              "nms_threshold": 0.3, "face": "largest", "speech": "", "syncnet": "auto",
              **DEVICE_PARAMS}
    reads = names("frame")
    writes = names("box", "face_id", "face_slot", "face_slots")

    choices = {"detector": ("auto", "s3fd", "haar"), "channel_order": ("auto", "rgb", "bgr")}
    bind = bind_auto(channel_order=lambda models: "rgb" if models[0] == "musetalk" else "bgr",
                     then=lambda params, graph: _bind_speech(params, graph))

    @classmethod
    def tracks_from_first_frame(cls, params) -> bool:
        """Track ids (the listing's) and the speaker are tracked from the video's first frame:
        a resumed or split run's source then decodes (and this stage detects) from there."""
        try:
            return tracks_ids(parse_choice(params["face"]))
        except ValueError:
            return False

    @classmethod
    def check_files(cls, params):
        if params["face"] != "speaker" or not params["speech"]:
            return []
        from lipgraph.media.audio import probe_audio
        try:
            probe_audio(params["speech"])
        except (ValueError, OSError) as exc:
            return [f"detect.face=speaker follows the speech of the video's own audio, and "
                    f"{params['speech']} has none ({exc})"]
        return []

    @classmethod
    def validate_params(cls, params):
        problems = check_device_params(params)
        every = str(params["detect_every"])
        if every != "auto" and not (every.isdigit() and int(every) >= 1):
            problems.append(("detect_every", f"expected a whole number >= 1 or auto, got {every!r}"))
        if params["batch_size"] < 1:
            problems.append(("batch_size", "must be >= 1"))
        if params["max_side"] < 0:
            problems.append(("max_side", "must be >= 0 (0: full resolution)"))
        try:
            parse_choice(params["face"])
        except ValueError as exc:
            problems.append(("face", str(exc)))
        syncnet = str(params["syncnet"])
        if syncnet not in ("auto", "off") and not os.path.isfile(syncnet):
            problems.append(("syncnet", f"expected auto, off or a SyncNet file (syncnet_v2.model); "
                                        f"{syncnet} does not exist"))
        return problems

    def open(self):
        from lipgraph.models.face_detection import build_face_detector
        device = resolve_device(self.p["device"])
        dtype = resolve_dtype(self.p["dtype"], device) if self.p["dtype"] != "auto" else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # max_side None: S3FD at full resolution, the cascade at its own 640 px
            options = {"max_side": self.p["max_side"] or None}
            if self.p["detector"] != "haar":     # S3FD's options ("auto" drops them for Haar)
                options.update(score_threshold=self.p["score_threshold"],
                               nms_threshold=self.p["nms_threshold"],
                               channel_order=self.p["channel_order"])
            self.detector = build_face_detector(self.p["detector"], self.p["weights"] or None,
                                                device=device, dtype=dtype, **options)
        for w in caught:
            self.ctx.warn(str(w.message))
        choice = parse_choice(self.p["face"])
        self.choice = None                # built at the first frame (it needs the frame rate)
        self.tracking = tracks_ids(choice)
        self.others: dict = {}        # index -> the frame's other chosen faces (face: ID+ID)
        self.loudness = self.syncnet = None     # face: speaker's audio, and SyncNet if it scores
        if choice[0] == "speaker":
            if not self.p["speech"]:
                raise ValueError("detect.face=speaker needs the source video (detect.speech)")
            from lipgraph.vision.speaker import SpeechLoudness
            from lipgraph.vision.speaker_syncnet import KEEP_S
            path = self.p["syncnet"]
            if path == "auto":
                from ._weights import find_optional
                path = find_optional(self.p["weights"], ["syncnet"])[0].get("syncnet")
                if path is None:
                    self.ctx.warn("detect.face=speaker: no SyncNet weights (syncnet_v2.model under "
                                  "--weights or the hub caches), so the speaker is chosen by mouth "
                                  "motion (detect.syncnet=off: the same, without this warning)")
            if path not in (None, "off"):
                from lipgraph.models.syncnet import load_syncnet
                self.syncnet = shared_model(("syncnet", os.path.abspath(path), device),
                                            lambda: load_syncnet(path, device=device))
            self.loudness = SpeechLoudness(self.p["speech"], keep_s=0.0 if self.syncnet is None else KEEP_S)
        # tracks with the listing's ids need the listing's detection: every frame, cuts found
        self.auto = str(self.p["detect_every"]) == "auto" and not self.tracking
        self.every = 1 if self.tracking else AUTO_EVERY if self.auto else int(self.p["detect_every"])
        self.cuts = ShotCuts() if self.tracking else None
        self.cut_at: set = set()
        self.cut_keys: set = set()    # indices made keyframes by a shot change
        # detect this many keyframes per call, holding about batch_size frames at most
        self.keys_per_call = max(1, self.p["batch_size"] // self.every)
        self.held: list = []          # frames not yet emitted, in order
        self.last_key = None          # (item, box) of the last detected keyframe (emitted)
        self.seen = self.with_face = 0

    # ----- stream ----------------------------------------------------------------------
    def process(self, item, port):
        if "box" in item.data:             # known already (prepared cache): nothing to detect
            yield from self._resolve(final=True)
            self.last_key = (item, item.data["box"])
            yield "out", self._counted(item)
            return
        if self.choice is None:
            self._start_choice(item)
        if self.auto:
            self._mark_cut(item)
        elif self.cuts is not None and self.cuts.is_cut(item.data["frame"]):
            self.cut_at.add(item.index)
            self.ctx.count("shot_changes")
        self.held.append(item)
        if self._keys_held() >= self.keys_per_call:
            yield from self._resolve(final=False)

    def on_flush(self, flush, port):
        yield from self._resolve(final=True)
        yield from super().on_flush(flush, port)

    def finish(self):
        yield from self._resolve(final=True)
        if self.seen and not self.with_face:
            self.ctx.warn(f"no face found in any of the {self.seen} frames: the output is the "
                          "input video with the new audio (check the video, or try "
                          "detect.detector=s3fd / a lower detect.score_threshold)")

    def _start_choice(self, item) -> None:
        self.fps = fps = float(self.info.get("fps") or 25.0)
        scorer = None
        if self.syncnet is not None:
            from lipgraph.vision.speaker_syncnet import SyncNetConfidence
            scorer = SyncNetConfidence(self.syncnet, self.loudness)
        self.choice = FaceChoice(parse_choice(self.p["face"]), max_lost=max(1, round(fps)), fps=fps,
                                 scorer=scorer)
        h, w = item.data["frame"].shape[:2]
        self.choice.size = (w, h)

    def _choose(self, item, boxes, previous):
        change, when = 0.0, None
        if self.loudness is not None:
            t = item.time if item.time is not None else item.index / self.fps
            when = (t, 1.0 / self.fps)
            change = self.loudness.change(*when)
        box, tid = self.choice.choose(item.index, boxes, previous, item.index in self.cut_at,
                                      frame=item.data["frame"], loudness_change=change, when=when)
        self.cut_at.discard(item.index)
        others = self.choice.others if self.choice.kind == "all" else []
        if others:
            self.others[item.index] = others
        for t in [tid, *(other for _, other in others)]:
            if t is not None:
                self.ctx.count(f"frames_face_{t}")
        if tid is not None:
            item.data["face_id"] = tid
        return box

    def _counted(self, item):
        self.seen += 1
        self.with_face += item.data["box"] is not None
        self.ctx.count("faces" if item.data["box"] is not None else "cutaways")
        return item

    def _faces_of(self, item):
        """The frame's item, or one item per chosen face (face: ID+ID) sharing its index and
        frame, slot by slot: the faces go through the models side by side and face_join pastes
        them back into one frame."""
        others = self.others.pop(item.index, ())
        if not others or item.data.get("preroll"):     # pre-roll only warms up: one item
            yield "out", item
            return
        item.data.update(face_slot=0, face_slots=len(others) + 1)
        yield "out", item
        for slot, (box, tid) in enumerate(others, start=1):
            yield "out", Item(item.index, {**item.data, "box": box, "face_id": tid,
                                           "face_slot": slot}, item.time, item.t0)

    def _is_key(self, pos_in_held: int) -> bool:
        # keyframes at absolute indices: a resumed run detects on the same frames
        index = self.held[pos_in_held].index
        return index % self.every == 0 or index in self.cut_keys

    def _mark_cut(self, item) -> None:
        """A shot change before `item`: it and the last frame of the old shot become keyframes."""
        if self.cuts is None:
            self.cuts = ShotCuts()
        if self.cuts.is_cut(item.data["frame"]):
            self.cut_keys.add(item.index)
            if self.held:
                self.cut_keys.add(self.held[-1].index)
            self.ctx.count("shot_changes")

    def _keys_held(self) -> int:
        return sum(1 for k in range(len(self.held)) if self._is_key(k))

    # ----- detection -------------------------------------------------------------------
    def _detect(self, items) -> list:
        if not items:
            return []
        self.ctx.count("detected", len(items))        # detection's share of the frames
        frames = [it.data["frame"] for it in items]
        with inference():
            return run_halving(self, lambda lo, hi: self.detector.detect(frames[lo:hi]), len(frames),
                               what="the face detector", indices=[it.index for it in items],
                               hint="a smaller detect.batch_size, or detect.max_side=1280 "
                                    "(detection on downscaled frames)")

    def _resolve(self, final: bool):
        """Detect the keyframes held, fill in the frames between, emit in order."""
        if not self.held:
            return
        keys = [k for k in range(len(self.held)) if self._is_key(k)]
        if final and (not keys or keys[-1] != len(self.held) - 1):
            keys.append(len(self.held) - 1)       # the stream's last frame closes the gap
        found = self._detect([self.held[k] for k in keys])
        prev_item, prev_box = self.last_key if self.last_key else (None, None)
        start = 0
        for k, boxes in zip(keys, found):
            between = self.held[start:k]
            key_box = self._choose(self.held[k], boxes, prev_box)
            self._fill(between, prev_box, key_box)
            self.held[k].data["box"] = key_box
            prev_box = key_box
            start = k + 1
        done = self.held[:start]
        self.held = self.held[start:]
        if done:
            self.last_key = (done[-1], prev_box)
            self.cut_keys = {i for i in self.cut_keys if i > done[-1].index}
        for it in done:
            yield from self._faces_of(self._counted(it))

    def _fill(self, between, box_a, box_b) -> None:
        """Boxes for frames between two detected keyframes."""
        if not between:
            return
        from lipgraph.models.face_detection import iou
        same = (box_a is not None and box_b is not None
                and iou(box_a, box_b) >= TRACK_IOU)
        if same:
            n = len(between) + 1
            for j, it in enumerate(between, start=1):
                w = j / n
                box = (1 - w) * box_a + w * box_b
                box[4] = min(box_a[4], box_b[4])
                it.data["box"] = box.astype(np.float32)
            return
        if box_a is None and box_b is None:
            for it in between:
                it.data["box"] = None
            return
        # a face appears, disappears or jumps: detect every frame in between
        prev = box_a
        for it, boxes in zip(between, self._detect(between)):
            prev = self._choose(it, boxes, prev)
            it.data["box"] = prev


def _bind_speech(params: dict, graph: dict) -> dict:
    """face: speaker follows the source's own speech: the audio of the video the graph decodes."""
    if params["face"] == "speaker" and not params["speech"]:
        source = next((s for s in graph.values() if "seekable_source" in s.cls.roles), None)
        params["speech"] = source.params.get("path", "") if source else ""
    return params
