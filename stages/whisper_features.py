"""whisper_features: attach the audio tokens each face frame needs.

A join of the frame stream (primary) with the audio stream (side input): the audio is read
only as far as the frame in hand needs, so memory stays flat (graph/README.md, rule 5).
Features are computed 30 s window by window (`media.audio_features`). Cutaway frames pass
through without features. `flavour` is set by the UNet backend: `musetalk` (all hidden
states, zero padding) or `latentsync` (last state before the final LayerNorm, clamped edges).
"""
from __future__ import annotations

from graph.stage import Stage

from ._torch import (DEVICE_PARAMS, check_device_params, inference, quiet_model_libraries,
                     resolve_device, resolve_dtype)


class WhisperFeatures(Stage):
    inputs = ("frames", "audio")
    outputs = ("out",)
    params = {"weights": "", "model": "", "flavour": "musetalk", **DEVICE_PARAMS}

    @classmethod
    def validate_params(cls, params):
        problems = check_device_params(params)
        if params["flavour"] not in ("musetalk", "latentsync"):
            problems.append(("flavour", f"expected musetalk or latentsync, got {params['flavour']!r}"))
        return problems

    @classmethod
    def required_weights(cls, params) -> list[str]:
        if params["model"]:
            return []
        return ["whisper_tiny_openai"] if params["flavour"] == "latentsync" else \
            ["whisper_config", "whisper_weights"]

    def open(self):
        from models.weights import resolve_weights
        from models.whisper import load_whisper_encoder
        self.device = resolve_device(self.p["device"])
        dtype = resolve_dtype(self.p["dtype"], self.device)
        path = self.p["model"]
        if not path:
            names = self.required_weights(self.p)
            found = resolve_weights(self.p["weights"] or None, names)
            path = str(found[names[-1]] if len(names) == 1 else found["whisper_weights"].parent)
        quiet_model_libraries()
        self.encoder = load_whisper_encoder(path, device=self.device, dtype=dtype)
        self.stream = None
        self.mel_peak = None
        self.pending = None
        self.audio_ended = False
        self.frames_ended = False

    def on_info(self, info, port):
        if port == "audio":
            self.mel_peak = info.data.get("mel_peak")
            return ()
        return super().on_info(info, port)

    def _stream(self):
        if self.stream is None:
            from media.audio_features import AudioFeatureStream
            fps = self.info.get("fps")
            if not fps:
                raise RuntimeError("no frame rate: the frame stream carried no Info with 'fps'")
            peak = self.mel_peak if self.p["flavour"] == "latentsync" else None
            self.stream = AudioFeatureStream(self.encoder, self.p["flavour"], fps, mel_peak=peak)
        return self.stream

    def accepts(self):
        # holding a frame that needs more audio, or no frames left: read audio
        if self.frames_ended or (self.pending is not None and not self.audio_ended):
            return ("audio",)
        return ("frames",)

    def process(self, item, port):
        if port == "audio":
            if self.frames_ended:
                return ()            # no frame needs it: drain without buffering
            self._stream().push(item.data["pcm"])
        else:
            self.pending = item
        return self._release()

    def on_eos(self, port):
        if port == "audio":
            self.audio_ended = True
            self._stream().close()
            return self._release()
        self.frames_ended = True
        return ()

    def _release(self):
        from media.audio_features import NeedMoreAudio
        item = self.pending
        if item is None:
            return
        if item.data.get("box") is not None:
            try:
                with inference():
                    item.data["audio"] = self._stream().features_at_time(item.time)
            except NeedMoreAudio:
                if self.audio_ended:
                    raise
                return
        self.pending = None
        yield "out", item

    def finish(self):
        if self.pending is not None:
            raise RuntimeError(f"frame {self.pending.index} still waits for audio at the end")
        return ()
