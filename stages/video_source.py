"""video_source: decode a video file into frames, streaming.

Output length follows the audio by default (the dub defines the clip): when the audio is
longer than the video the video plays forward, backward, forward ... (ping-pong, as upstream
does); when shorter, the video is cut. `length: video` keeps the video's own length. Frame
times come from pts (variable frame rates stay in sync), rotation metadata is applied,
odd sizes are kept.
"""
from __future__ import annotations

import math

from graph.items import Info, Item
from graph.stage import Stage


class VideoSource(Stage):
    inputs = ()
    outputs = ("out",)
    # start: first output frame still to make (set when resuming a job); the stream begins
    # `preroll` frames earlier so stages with history (face tracking, smoothing) pick up as
    # they would have; the mux drops frames it already has
    # stop: first output frame not to make (0: the end; set for one part of a split job)
    params = {"path": "", "audio": "", "length": "audio", "threads": "AUTO", "chunk": 32,
              "start": 0, "preroll": 8, "stop": 0}

    @classmethod
    def validate_params(cls, params):
        problems = []
        if params["length"] not in ("audio", "video"):
            problems.append(("length", f"expected 'audio' or 'video', got {params['length']!r}"))
        if params["length"] == "audio" and not params["audio"]:
            problems.append(("audio", "length: audio needs the audio file (params.audio / --audio)"))
        if not params["path"]:
            problems.append(("path", "no input video (params.path / --video)"))
        return problems

    @classmethod
    def check_files(cls, params):
        from media.video import MediaError, probe_video
        try:
            probe_video(params["path"])
        except MediaError as exc:
            return [str(exc)]
        return []

    @staticmethod
    def plan(params: dict):
        """(video info, output frame count, audio duration or None) for these params."""
        from media.video import probe_video
        vinfo = probe_video(params["path"])
        if params["length"] == "audio":
            from media.audio import probe_audio
            limit_s = probe_audio(params["audio"]).duration_s
            return vinfo, int(math.floor(limit_s * vinfo.fps + 1e-6)), limit_s
        return vinfo, vinfo.frame_count, None

    def open(self):
        self.vinfo, self.total, self.limit_s = self.plan(self.p)
        self.fps = self.vinfo.fps

    def _frames(self):
        from media.video import PingPongReader, VideoReader
        src_duration = self.vinfo.frame_count / self.fps
        # containers that do not store a frame count (Matroska, WebM) only estimate it:
        # the ping-pong reader counts the packets, so let it decide whether to turn back
        if self.limit_s is not None and (not self.vinfo.frame_count_exact
                                         or self.limit_s > src_duration + 1e-6):
            with PingPongReader(self.p["path"], self.total, chunk=self.p["chunk"],
                                threads=self.p["threads"], start=self.first) as r:
                for f in r:
                    yield f.index, f.time, f.image, f.source_index
        else:
            with VideoReader(self.p["path"], threads=self.p["threads"],
                             start_index=self.first) as r:
                for f in r:
                    yield f.index, f.time, f.image, f.index

    def generate(self):
        v = self.vinfo
        start = self.p["start"]
        self.first = max(0, start - self.p["preroll"]) if start else 0
        end = min(self.total, self.p["stop"]) if self.p["stop"] else self.total
        self.ctx.set_total(max(0, end - self.first))
        yield "out", Info(start_index=self.first, total=self.total, fps=self.fps, width=v.width,
                          height=v.height, rotation=v.rotation, video_path=self.p["path"])
        eps = 1e-6
        if start >= end:
            return                      # a resumed job whose frames are all done
        made = self.first
        for index, t, image, src in self._frames():
            # a frame belongs to the output if it is shown entirely within the audio
            if self.limit_s is not None and (index >= self.total or t + 1.0 / self.fps > self.limit_s + eps):
                return
            if index >= end:
                return
            made = index + 1
            data = {"frame": image, "src_index": src}
            if index < start:
                data["preroll"] = True      # context only: not output, never sent to a model
            yield "out", Item(index, data, time_s=float(t))
        # a count read from the header is exact; one estimated from the duration is not
        slack = 0 if self.vinfo.frame_count_exact else max(2, end // 50)
        if made < end - slack:
            promised = "its header promised" if self.vinfo.frame_count_exact else "its duration suggested"
            self.ctx.warn(f"{self.p['path']}: the video ended after {made} frames where {promised} "
                          f"{self.vinfo.frame_count} (truncated or damaged file?); the output stops there")
