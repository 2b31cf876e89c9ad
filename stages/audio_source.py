"""audio_source: decode any audio (or a video's audio track) to 16 kHz mono chunks.

Damaged audio: a packet that cannot be decoded is given as silence of its duration (see
media/audio.py), so everything after it stays in sync and the track keeps its length; each
such packet is counted in the profile as `audio_packets_undecodable`, and the first one is
warned about with the file and its time."""
from __future__ import annotations

from lipgraph.graph.items import Info, Item
from lipgraph.graph.stage import Stage

from .unet_model import bind_auto
from .fields import names

SAMPLE_RATE = 16000


class AudioSource(Stage):
    inputs = ()
    outputs = ("out",)
    # peak: also measure the whole clip's log-mel peak first (LatentSync's features need it);
    # auto: when the graph runs LatentSync
    params = {"path": "", "chunk_s": 1.0, "peak": "auto"}
    reads = ()
    writes = names("pcm")

    choices = {"peak": ("auto", "yes", "no")}
    bind = bind_auto(peak=lambda models: "yes" if "latentsync" in models else "no")

    @classmethod
    def validate_params(cls, params):
        problems = []
        if not params["path"]:
            problems.append(("path", "no input audio (params.path / --audio)"))
        if params["chunk_s"] <= 0:
            problems.append(("chunk_s", "must be > 0"))
        return problems

    @classmethod
    def check_files(cls, params):
        from lipgraph.media.audio import probe_audio
        from lipgraph.media.decode import MediaError
        try:
            info = probe_audio(params["path"])
        except MediaError as exc:
            return [str(exc)]
        if not info.duration_s > 0:
            return [f"{params['path']}: the audio is empty (no samples to lip-sync to)"]
        return []

    def generate(self):
        from lipgraph.media.audio import AudioReader, probe_audio
        info = probe_audio(self.p["path"])
        facts = {"start_index": 0, "sample_rate": SAMPLE_RATE, "duration": info.duration_s,
                 "audio_path": self.p["path"]}
        if self.p["peak"] == "yes":
            from lipgraph.media.audio_features import latentsync_mel_peak
            with AudioReader(self.p["path"], SAMPLE_RATE, self.p["chunk_s"]) as r:
                facts["mel_peak"] = float(latentsync_mel_peak(r))
        yield "out", Info(facts)
        with AudioReader(self.p["path"], SAMPLE_RATE, self.p["chunk_s"],
                         on_damage=self._damaged) as r:
            for k, pcm in enumerate(r):
                yield "out", Item(k, {"pcm": pcm})

    def _damaged(self, time_s, seconds: float) -> None:
        self.ctx.count("audio_packets_undecodable")
        if not getattr(self, "_warned_damage", False):
            self._warned_damage = True
            at = "" if time_s is None else f" at {time_s:.3f} s"
            self.ctx.warn(f"{self.p['path']}: audio{at} could not be decoded (damaged data); "
                          f"{seconds * 1000:.0f} ms of silence stand in for it, so nothing after "
                          "it shifts; every such packet is counted in the profile as "
                          "audio_packets_undecodable")
