"""video_source: decode a video file into frames, streaming.

Output length follows the audio by default (the dub defines the clip): when the audio is
longer than the video the video plays forward, backward, forward ... (ping-pong, as upstream
does); when shorter, the video is cut. `length: video` keeps the video's own length. Frame
times come from pts (variable frame rates stay in sync), rotation metadata is applied,
odd sizes are kept.

Output frame rate (`fps`, `--fps`): `source` (the default) streams the decoded frames as
they are, at their own times. A rate R (25, 29.97, "30000/1001") resamples the decoded
stream by presentation time to a constant R, by the rule of FFmpeg's `fps` filter with its
default rounding (`round=near`, AV_ROUND_NEAR_INF):

- source frame i, at time t_i after the first frame, starts at output frame
  round(t_i * R), an exact half rounding up, and is shown until the next source frame
  starts;
- so output frame k (time k / R) shows the latest source frame with t_i * R < k + 1/2:
  the frame on screen just before the middle of output frame k's interval;
- frames that start on the same output frame as a later one are dropped; a frame covering
  several output frames is repeated (a copy of the same decoded picture, so a cutaway is
  still an untouched input frame);
- the resampled sequence covers the source: round(duration * R) frames (at least 1), the
  source ending at its last frame's time plus 1 / its average rate.

`media.resample.resample_picks` is the rule; it picks the same frames as libavfilter's `fps`
filter. Upstream LatentSync re-encodes its input with `ffmpeg -i IN -r 25 -crf 18` before
inference, which also picks frames by timestamp; note that the ffmpeg command line applies
an output `-r` through its constant-frame-rate sync rather than the `fps` filter (it drops or
repeats a frame only once timestamps drift by more than 1.1 output frames), so its choice
can trail this one by up to about two output frames.

With `length: audio` a resampled output has floor(audio seconds * R) frames; when that is
more than the resampled sequence holds, the resampled frames play forward, backward ...
(upstream also resamples first, then loops). Output times are k / R and the audio is left
as it is, so every later stage (audio features per frame, mux timing, segments, resume and
split parts, all counted in output frames) works at R. Each frame's `src_index` (the mux
sidecar's `src`) names the source frame it shows.

Damaged video: a frame that cannot be decoded keeps its place (index and time): the previous
decoded frame is shown in its stead (the next decoded one if none came before), each such
output frame is counted in the profile as `frames_repeated_undecodable`, and the first one
is warned about, naming the file and the frame. Frames the decoder can conceal come out as
it gives them. So a damaged stretch never shifts the video against the audio.
"""
from __future__ import annotations

import math
from fractions import Fraction

from lipgraph.graph.items import Info, Item
from lipgraph.graph.stage import Stage

from .fields import names


FROM_FIRST_FRAME = 1 << 40       # preroll: decode from the video's first frame


class VideoSource(Stage):
    inputs = ()
    outputs = ("out",)
    # start: first output frame still to make (set when resuming a job); the stream begins
    # `preroll` frames earlier so stages with history (face tracking, smoothing) pick up as
    # they would have; the mux drops frames it already has
    # stop: first output frame not to make (0: the end; set for one part of a split job)
    # fps: `source` or a constant output rate (a string, so "30000/1001" stays exact)
    params = {"path": "", "audio": "", "length": "audio", "threads": "AUTO", "chunk": 32,
              "start": 0, "preroll": 8, "stop": 0, "fps": "source"}
    reads = ()
    writes = names("frame", "src_index", "preroll")
    roles = ("seekable_source",)
    placement_params = ("start", "stop")

    @classmethod
    def bind(cls, params, graph, notes):
        # a stage that follows face tracks by id from the first frame (face_detect with track
        # ids or the speaker) needs that history in a resumed or split run too
        if any(getattr(s.cls, "tracks_from_first_frame", lambda p: False)(s.params)
               for s in graph.values()):
            params["preroll"] = FROM_FIRST_FRAME
        return params

    @staticmethod
    def output_rate(params: dict) -> Fraction | None:
        """The output frame rate asked for, exactly, or None for `source`. Raises ValueError
        on anything else. Denominators stay <= 1001 (29.97, 30000/1001, 23.976 ...) because
        the writer and the audio features recover the rate from a float that way."""
        text = str(params["fps"]).strip()
        if text == "source":
            return None
        try:
            rate = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected 'source' or a frame rate such as 25, 29.97 or "
                             f"30000/1001, got {params['fps']!r}") from None
        if not 0 < rate <= 1000:
            raise ValueError(f"the frame rate must be within (0, 1000], got {params['fps']!r}")
        if rate.denominator > 1001:
            raise ValueError(f"{params['fps']!r}: give the rate as a fraction with a "
                             "denominator of at most 1001 (e.g. 30000/1001)")
        return rate

    @classmethod
    def validate_params(cls, params):
        problems = []
        if params["length"] not in ("audio", "video"):
            problems.append(("length", f"expected 'audio' or 'video', got {params['length']!r}"))
        if params["length"] == "audio" and not params["audio"]:
            problems.append(("audio", "length: audio needs the audio file (params.audio / --audio)"))
        if not params["path"]:
            problems.append(("path", "no input video (params.path / --video)"))
        try:
            VideoSource.output_rate(params)
        except ValueError as exc:
            problems.append(("fps", str(exc)))
        return problems

    @classmethod
    def check_files(cls, params):
        from lipgraph.media.decode import MediaError
        from lipgraph.media.probe import probe_video
        try:
            probe_video(params["path"])
        except MediaError as exc:
            return [str(exc)]
        return []

    @staticmethod
    def plan(params: dict):
        """(video info, output frame count, audio duration or None) for these params."""
        from lipgraph.media.probe import probe_video
        from lipgraph.media.resample import resampled_frames
        vinfo = probe_video(params["path"])
        rate = VideoSource.output_rate(params)
        fps = vinfo.fps if rate is None else float(rate)
        if params["length"] == "audio":
            from lipgraph.media.audio import probe_audio
            limit_s = probe_audio(params["audio"]).duration_s
            return vinfo, int(math.floor(limit_s * fps + 1e-6)), limit_s
        if rate is not None:
            return vinfo, len(resampled_frames(params["path"], rate)), None
        return vinfo, vinfo.frame_count, None

    @staticmethod
    def output_keyframes(params: dict, vinfo) -> list[int]:
        """Output indices, within the first forward pass, where a keyframe of the source
        is (or, resampling, the first output frame from that keyframe on): where a split
        job prefers to cut."""
        from lipgraph.media.frame_source import keyframe_indices
        from lipgraph.media.resample import resampled_frames
        keys = keyframe_indices(params["path"])
        rate = VideoSource.output_rate(params)
        if rate is None:
            # output frame i shows source frame i up to the end of the first forward pass
            return [k for k in keys if k < vinfo.frame_count]
        import numpy as np
        picks = resampled_frames(params["path"], rate)
        found = np.searchsorted(picks, keys, side="left")
        return sorted({int(r) for r in found if r < len(picks)})

    # ----- seekable_source: what resumable and split jobs ask (runners/job.py) ----------
    @staticmethod
    def seek(start: int, stop: int | None = None) -> dict:
        """Params that make the output begin at frame `start` (and end before `stop`)."""
        return {"start": start} if stop is None else {"start": start, "stop": stop}

    @classmethod
    def frames(cls, params: dict) -> tuple[int, list[int]]:
        """The output's frame count and the frames where a split job prefers to cut."""
        vinfo, total, _ = cls.plan(params)
        return total, cls.output_keyframes(params, vinfo)

    def open(self):
        self.vinfo, self.total, self.limit_s = self.plan(self.p)
        self.rate = self.output_rate(self.p)
        self.fps = self.vinfo.fps if self.rate is None else float(self.rate)

    def _frames(self):
        from lipgraph.media.pingpong import PingPongReader
        from lipgraph.media.resample import ResampledReader
        from lipgraph.media.video import VideoReader
        path, threads = self.p["path"], self.p["threads"]
        src_duration = self.vinfo.frame_count / self.fps
        if self.rate is not None:
            reader = ResampledReader(path, self.rate, self.total, chunk=self.p["chunk"],
                                     threads=threads, start=self.first)
        # containers that do not store a frame count (Matroska, WebM) only estimate it:
        # the ping-pong reader counts the packets, so let it decide whether to turn back
        elif self.limit_s is not None and (not self.vinfo.frame_count_exact
                                           or self.limit_s > src_duration + 1e-6):
            reader = PingPongReader(path, self.total, chunk=self.p["chunk"], threads=threads,
                                    start=self.first)
        else:
            reader = VideoReader(path, threads=threads, start_index=self.first)
        with reader as r:
            for f in r:
                yield f.index, f.time, f.image, getattr(f, "source_index", f.index), f.undecodable

    def generate(self):
        v = self.vinfo
        start = self.p["start"]
        self.first = max(0, start - self.p["preroll"]) if start else 0
        end = min(self.total, self.p["stop"]) if self.p["stop"] else self.total
        self.ctx.set_total(max(0, end - self.first))
        yield "out", Info(start_index=self.first, total=self.total, fps=self.fps, width=v.width,
                          height=v.height, rotation=v.rotation, video_path=self.p["path"])
        if start >= end:
            return                      # a resumed job whose frames are all done
        made = self.first
        for index, t, image, src, undecodable in self._frames():
            # a frame belongs to the output if it is shown entirely within the audio
            beyond_audio = self.limit_s is not None and (index >= self.total
                                                         or t + 1.0 / self.fps > self.limit_s + 1e-6)
            if beyond_audio or index >= end:
                return
            made = index + 1
            data = {"frame": image, "src_index": src}
            if index < start:
                data["preroll"] = True      # context only: not output, never sent to a model
            elif undecodable:
                self._undecodable(index, src)
            yield "out", Item(index, data, time_s=float(t))
        if self.rate is not None:
            # the resampled count comes from the packets themselves: short means undecodable
            if made < end:
                self.ctx.warn(f"{self.p['path']}: decoding stopped after {made} of {end} output "
                              "frames (truncated or damaged file?); the output stops there")
            return
        # a count read from the header is exact; one estimated from the duration is not
        slack = 0 if self.vinfo.frame_count_exact else max(2, end // 50)
        if made < end - slack:
            promised = "its header promised" if self.vinfo.frame_count_exact else "its duration suggested"
            self.ctx.warn(f"{self.p['path']}: the video ended after {made} frames where {promised} "
                          f"{self.vinfo.frame_count} (truncated or damaged file?); the output stops there")

    def _undecodable(self, index: int, src: int) -> None:
        self.ctx.count("frames_repeated_undecodable")
        if not getattr(self, "_warned_undecodable", False):
            self._warned_undecodable = True
            self.ctx.warn(f"{self.p['path']}: frame {src} could not be decoded (damaged or "
                          "incomplete data); the previous decoded frame (at the very start, the "
                          f"next one) is shown in its place as output frame {index}, so nothing "
                          "shifts; every such frame is counted in the profile as "
                          "frames_repeated_undecodable")
