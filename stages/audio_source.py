"""audio_source: decode any audio (or a video's audio track) to 16 kHz mono chunks.

`dubs: [ID=PATH, ...]` (one dub per speaker, `--dub`): each chunk also carries every dub's
samples over the same span (`dub_pcm`), so the Whisper stage gives each face its own audio.

Damaged audio: a packet that cannot be decoded is given as silence of its duration (see
media/audio.py), so everything after it stays in sync and the track keeps its length; each
such packet is counted in the profile as `audio_packets_undecodable`, and the first one is
warned about with the file and its time."""
from __future__ import annotations

import contextlib

import numpy as np

from lipgraph.graph.items import Info, Item
from lipgraph.graph.stage import Stage
from lipgraph.media.dubs import parse_dubs

from .unet_model import bind_auto
from .fields import names

SAMPLE_RATE = 16000


class AudioSource(Stage):
    inputs = ()
    outputs = ("out",)
    # peak: also measure the whole clip's log-mel peak first (LatentSync's features need it);
    # auto: when the graph runs LatentSync
    # dubs: ["ID=PATH", ...]: each face track's own dub (media/dubs.py), read beside `path`
    params = {"path": "", "chunk_s": 1.0, "peak": "auto", "dubs": []}
    reads = ()
    writes = names("pcm", "dub_pcm")

    choices = {"peak": ("auto", "yes", "no")}
    bind = bind_auto(peak=lambda models: "yes" if "latentsync" in models else "no")

    @classmethod
    def validate_params(cls, params):
        problems = []
        if not params["path"]:
            problems.append(("path", "no input audio (params.path / --audio)"))
        if params["chunk_s"] <= 0:
            problems.append(("chunk_s", "must be > 0"))
        try:
            parse_dubs(params["dubs"])
        except ValueError as exc:
            problems.append(("dubs", str(exc)))
        return problems

    @classmethod
    def check_files(cls, params):
        from lipgraph.media.audio import probe_audio
        from lipgraph.media.decode import MediaError
        problems = []
        for path in [params["path"], *parse_dubs(params["dubs"]).values()]:
            try:
                info = probe_audio(path)
            except MediaError as exc:
                problems.append(str(exc))
                continue
            if not info.duration_s > 0:
                problems.append(f"{path}: the audio is empty (no samples to lip-sync to)")
        return problems

    def generate(self):
        from lipgraph.media.audio import AudioReader, probe_audio
        info = probe_audio(self.p["path"])
        facts = {"start_index": 0, "sample_rate": SAMPLE_RATE, "duration": info.duration_s,
                 "audio_path": self.p["path"]}
        dubs = parse_dubs(self.p["dubs"])
        if self.p["peak"] == "yes":
            from lipgraph.media.audio_features import latentsync_mel_peak

            def peak(path):
                with AudioReader(path, SAMPLE_RATE, self.p["chunk_s"]) as r:
                    return float(latentsync_mel_peak(r))
            facts["mel_peak"] = peak(self.p["path"])
            if dubs:
                facts["dub_mel_peaks"] = {tid: peak(path) for tid, path in dubs.items()}
        yield "out", Info(facts)
        with contextlib.ExitStack() as stack:
            main = stack.enter_context(AudioReader(self.p["path"], SAMPLE_RATE, self.p["chunk_s"],
                                                   on_damage=self._damaged))
            lanes = {tid: stack.enter_context(AudioReader(path, SAMPLE_RATE, self.p["chunk_s"]))
                     for tid, path in dubs.items()}
            for k, pcm in enumerate(main):
                data = {"pcm": pcm}
                if lanes:      # each dub over the same span (silence after its end)
                    data["dub_pcm"] = {tid: _fit(next(r, None), pcm.size) for tid, r in lanes.items()}
                yield "out", Item(k, data)

    def _damaged(self, time_s, seconds: float) -> None:
        self.ctx.count("audio_packets_undecodable")
        if not getattr(self, "_warned_damage", False):
            self._warned_damage = True
            at = "" if time_s is None else f" at {time_s:.3f} s"
            self.ctx.warn(f"{self.p['path']}: audio{at} could not be decoded (damaged data); "
                          f"{seconds * 1000:.0f} ms of silence stand in for it, so nothing after "
                          "it shifts; every such packet is counted in the profile as "
                          "audio_packets_undecodable")


def _fit(chunk, n: int) -> np.ndarray:
    """A dub's chunk cut or padded with silence to the main track's chunk length."""
    if chunk is None:
        return np.zeros(n, np.float32)
    return chunk[:n] if chunk.size >= n else np.pad(chunk, (0, n - chunk.size))
