"""whisper_features: attach the audio tokens each face frame needs.

A join of the frame stream (primary) with the audio stream (side input): the audio is read
only as far as the frame in hand needs, so memory stays flat (graph/README.md, rule 5).
Features are computed 30 s window by window (`media.audio_features`). Cutaway frames pass
through without features. Each UNet gets the features it was trained on: `musetalk` (all
hidden states, zero padding) -> `audio`; `latentsync` (last state before the final
LayerNorm, clamped edges, the whole clip's mel peak) -> `audio_ls`. `model: auto` computes
what the graph's UNet stage needs (both when LatentSync falls back to MuseTalk); `whisper`
names the Whisper files (else found under --weights). With one dub per speaker
(audio.dubs), a face frame gets the features of its own track's dub (`face_id`), else of the
main audio.
"""
from __future__ import annotations

from lipgraph.graph.stage import Stage

from ._torch import (DEVICE_PARAMS, check_device_params, inference, quiet_model_libraries,
                     resolve_device, resolve_dtype)
from .fields import names


FEATURE_KEYS = {"musetalk": "audio", "latentsync": "audio_ls"}


class WhisperFeatures(Stage):
    inputs = ("frames", "audio")
    outputs = ("out",)
    params = {"weights": "", "whisper": "", "model": "auto", **DEVICE_PARAMS}
    renamed = {"flavour": "model"}
    random_weights = {"whisper": "whisper"}
    reads = {"frames": names("box"), "audio": names("pcm")}     # and dub_pcm, when given
    writes = names(*FEATURE_KEYS.values())

    @classmethod
    def bind(cls, params, graph, notes):
        if params["model"] == "auto":
            from .unet_model import graph_models
            params["model"] = ",".join(graph_models(graph))
        return params

    @classmethod
    def validate_params(cls, params):
        problems = check_device_params(params)
        bad = [f for f in params["model"].split(",") if f not in ("musetalk", "latentsync", "auto")]
        if bad:
            hint = " (the Whisper files' folder is the param `whisper`)" if "/" in params["model"] else ""
            problems.append(("model", f"expected musetalk, latentsync or both (comma-separated), "
                                      f"got {params['model']!r}{hint}"))
        return problems

    @classmethod
    def required_weights(cls, params) -> list[str]:
        if params["whisper"]:
            return []
        # the HF whisper-tiny folder of a MuseTalk layout, else LatentSync's tiny.pt
        return ["whisper_config", "whisper_weights"] if "musetalk" in params["model"] \
            else ["whisper_tiny_openai"]

    def open(self):
        from lipgraph.models.whisper import load_whisper_encoder

        from ._weights import resolve
        self.device = resolve_device(self.p["device"])
        dtype = resolve_dtype(self.p["dtype"], self.device)
        path = self.p["whisper"]
        if not path:
            names = self.required_weights(self.p)
            found = resolve(self, names)
            path = str(found[names[-1]] if len(names) == 1 else found["whisper_weights"].parent)
        quiet_model_libraries()
        self.encoder = load_whisper_encoder(path, device=self.device, dtype=dtype)
        self.models = self.p["model"].split(",")
        self.streams = None           # lane (None: the main audio; else a track id) -> streams
        self.mel_peaks: dict = {}
        self.pending = None
        self.audio_ended = False
        self.frames_ended = False

    def on_info(self, info, port):
        if port == "audio":
            self.mel_peaks = {None: info.data.get("mel_peak"), **(info.data.get("dub_mel_peaks") or {})}
            return ()
        return super().on_info(info, port)

    def _lanes(self, dubs=()) -> dict:
        """Feature streams per audio lane: the main audio, and each speaker's dub (audio.dubs)."""
        if self.streams is None:
            self.streams = {}
        for lane in (None, *dubs):
            if lane not in self.streams:
                self.streams[lane] = self._new_streams(self.mel_peaks.get(lane))
        return self.streams

    def _new_streams(self, mel_peak) -> dict:
        from lipgraph.media.audio_features import AudioFeatureStream
        fps = self.info.get("fps")
        if not fps:
            raise RuntimeError("no frame rate: the frame stream carried no Info with 'fps'")
        return {f: AudioFeatureStream(self.encoder, f, fps,
                                      mel_peak=mel_peak if f == "latentsync" else None)
                for f in self.models}

    def accepts(self):
        # holding a frame that needs more audio, or no frames left: read audio
        if self.frames_ended or (self.pending is not None and not self.audio_ended):
            return ("audio",)
        return ("frames",)

    def process(self, item, port):
        if port == "audio":
            if self.frames_ended:
                return ()            # no frame needs it: drain without buffering
            dubs = item.data.get("dub_pcm") or {}
            for lane, streams in self._lanes(dubs).items():
                for stream in streams.values():
                    stream.push(item.data["pcm"] if lane is None else dubs[lane])
        else:
            self.pending = item
        return self._release()

    def on_eos(self, port):
        if port == "audio":
            self.audio_ended = True
            for streams in self._lanes().values():
                for stream in streams.values():
                    stream.close()
            return self._release()
        self.frames_ended = True
        return ()

    def _release(self):
        from lipgraph.media.audio_features import NeedMoreAudio
        item = self.pending
        if item is None:
            return
        lanes = self._lanes()
        asked = None
        if item.data.get("box") is not None:
            asked = lanes.get(item.data.get("face_id"), lanes[None])   # the face's own dub
            try:
                with inference():
                    feats = {f: s.features_at_time(item.time) for f, s in asked.items()}
            except NeedMoreAudio:
                if self.audio_ended:
                    raise
                return
            for f, v in feats.items():
                item.data[FEATURE_KEYS[f]] = v
        if len(lanes) > 1 and item.time is not None:
            # frames only move forward: the lanes not asked drop what only earlier frames need
            for streams in lanes.values():
                if streams is not asked:
                    for stream in streams.values():
                        stream.skip_to_time(item.time)
        self.pending = None
        yield "out", item

    def finish(self):
        if self.pending is not None:
            raise RuntimeError(f"frame {self.pending.index} still waits for audio at the end")
        return ()
