"""mux: the output file. Merges the blended face frames and the bypassed cutaways back into
index order (holding at most one message per input), encodes H.264 (libx264, yuv420p,
crf 18, preset `faster` by default: encoding is the CPU side's biggest cost, and `faster`
keeps the whole CPU side near 40 core-ms per 1080p frame where `medium` takes 56, see
bench/cpu_side.py) at the stream's frame rate (the source's, or video_source's `fps`) and
timestamps, and muxes the new audio track (AAC), cut or padded with silence to the video's
duration. Writes to a temporary file that is renamed onto `path` only when the stream ends;
a failed run leaves nothing there.
For a lossless master: `codec: ffv1`, `pix_fmt: bgr0` and a .mkv path.

`sidecar: PATH` also writes one JSON line per output frame: index, time, src (the decoded
source frame it shows; resampled by video_source's `fps`, a repeated frame names the same
one), face (face box or null for a cutaway), edit (box of every pixel that may have
changed, or null), model (the model that made the mouth), face_id (the face track
dubbed, when `detect.face` names track ids), and on a frame where several faces were dubbed
`faces`: one record per face (id, face, edit, model, restore; the first is the line's own).

With `workdir` (set by run_graph: segments are on unless `segment_s: 0`), frames go into
segments of `segment_s` seconds recorded in the job's manifest, joined into the output at
the end (see media/segments.py); a killed run resumes from its last complete segment.
`encoders: N` encodes N consecutive segments at once (`auto`: one per 4 cores, at most 4), so
one sink is not capped by one thread's per-frame work; the same frames and timestamps.
`join: false` leaves the segments for whoever joins the parts of a split job."""
from __future__ import annotations

import os

from lipgraph.graph.ordering import OrderedMerge
from lipgraph.graph.stage import Stage

from .fields import names


class Mux(Stage):
    inputs = ("main", "bypass")
    outputs = ()
    params = {"path": "", "audio": "", "crf": 18, "preset": "faster", "codec": "libx264",
              "pix_fmt": "yuv420p", "sidecar": "", "segment_s": 10.0, "workdir": "", "join": True,
              "comment": "", "encoders": "auto"}
    reads = names("frame")
    writes = ()
    roles = ("segmented_sink",)
    # encoders changes how fast, not what: a job resumes across it
    placement_params = ("path", "sidecar", "workdir", "join", "encoders")

    # ----- segmented_sink: what resumable and split jobs ask (runners/job.py) -----------
    @staticmethod
    def job_output(params: dict) -> str | None:
        """The output file when it is written in segments (the run is a resumable job)."""
        return params["path"] if params["segment_s"] > 0 and params["path"] else None

    @staticmethod
    def segments_in(workdir: str, join: bool = True) -> dict:
        """Params that write the segments into `workdir`; `join=False` leaves them there
        for the driver of a split job to join."""
        return {"workdir": workdir} if join else {"workdir": workdir, "join": False}

    @classmethod
    def join_parts(cls, params: dict, manifest) -> None:
        """Join the segments of a split job's parts (one combined manifest) into the output."""
        from lipgraph.media.segments import join_segments
        join_segments(manifest, params["path"], params["audio"] or None, params["sidecar"] or None,
                      cls.metadata(params))

    @classmethod
    def validate_params(cls, params):
        problems = []
        if not params["path"]:
            problems.append(("path", "no output file (params.path / --output)"))
        if not 0 <= params["crf"] <= 51:
            problems.append(("crf", "must be within 0..51"))
        if params["segment_s"] < 0:
            problems.append(("segment_s", "must be >= 0 (0: no segments, not resumable)"))
        if not (params["encoders"] == "auto" or str(params["encoders"]).isdigit() and int(params["encoders"]) >= 1):
            problems.append(("encoders", f"expected a whole number >= 1 or auto, got {params['encoders']!r}"))
        return problems

    @classmethod
    def check_files(cls, params):
        from lipgraph.media.writer import container_format
        path = os.path.abspath(params["path"])
        folder = os.path.dirname(path)
        try:
            container_format(path)
        except ValueError as exc:
            return [str(exc)]
        if os.path.isdir(path):
            return [f"{path}: the output path is a folder"]
        if not os.path.isdir(folder):
            return [f"{path}: the output folder {folder} does not exist"]
        if not os.access(folder, os.W_OK | os.X_OK):
            return [f"{path}: cannot write in the output folder {folder} (permission denied)"]
        return []

    def open(self):
        from lipgraph.media.partial import sweep_partials
        # temporary files an earlier run left when it was killed whole (its pid is gone)
        sweep_partials(self.p["path"], self.p["sidecar"])
        self.merge = OrderedMerge(list(self.in_ports), name=self.name)
        self.writer = None
        self.manifest = None
        self.sidecar = None
        self.have_below = 0         # frames below this index are in completed segments
        if self.p["workdir"]:
            from lipgraph.media.segments import Manifest
            self.manifest = Manifest.load(self.p["workdir"])
            if self.manifest is None:
                raise RuntimeError(f"{self.p['workdir']}: no job manifest")
            self.have_below = self.manifest.next_frame()
        elif self.p["sidecar"]:
            from lipgraph.media.partial import partial_path
            self.sidecar_tmp = partial_path(self.p["sidecar"])
            self.ctx.register_temp(self.sidecar_tmp)
            self.sidecar = open(self.sidecar_tmp, "w")

    def accepts(self):
        return self.merge.accepts()

    def on_info(self, info, port):
        self.info.update(info.data)
        if "start_index" in info.data:
            self._write(self.merge.set_start(info.data["start_index"]))
        return ()

    def process(self, item, port):
        self._write(self.merge.push(port, item))
        return ()

    def on_eos(self, port):
        self._write(self.merge.end(port))
        return ()

    def _open_writer(self, frame) -> None:
        fps = self.info.get("fps")
        if not fps:
            raise RuntimeError("no frame rate: the stream carried no Info with 'fps'")
        h, w = frame.shape[:2]
        encoder = dict(crf=self.p["crf"], preset=self.p["preset"], codec=self.p["codec"],
                       pix_fmt=self.p["pix_fmt"])
        if self.manifest is not None:
            from lipgraph.media.segments import SegmentWriter, segment_frames
            self.writer = SegmentWriter(self.manifest, w, h, fps,
                                        segment_frames(self.p["segment_s"], fps),
                                        on_temp=self.ctx.register_temp,
                                        encoders=encoder_count(self.p["encoders"]), **encoder)
            return
        from lipgraph.media.writer import VideoWriter
        self.writer = VideoWriter(self.p["path"], w, h, fps, audio_path=self.p["audio"] or None,
                                  metadata=self.metadata(self.p), **encoder)
        self.ctx.register_temp(self.writer.temp_path)

    def _write(self, msgs) -> None:
        from lipgraph.media.writer import output_errors
        with output_errors(self.p["path"]):      # a full disk is named after the output
            self._write_items(msgs)

    def _write_items(self, msgs) -> None:
        for msg in msgs:
            for item in msg.members():
                if item.index < self.have_below:
                    continue        # a resumed run's pre-roll: already written
                frame = item.data["frame"]
                if self.writer is None:
                    self._open_writer(frame)
                line = self._sidecar_line(item) if self.p["sidecar"] else None
                if self.manifest is not None:
                    self.writer.write(item.index, frame, item.time, line)
                else:
                    self.writer.write(frame, item.time)
                    if line is not None:
                        self.sidecar.write(line + "\n")

    @staticmethod
    def metadata(params: dict) -> dict:
        """Container tags of the output file."""
        return {"comment": params["comment"]} if params["comment"] else {}

    def _sidecar_line(self, item) -> str:
        import json

        from .face_join import face_record
        d = item.data
        face = face_record(d)
        return json.dumps({
            "index": item.index, "time": item.time, "src": d.get("src_index"),
            "face": face and face["face"], "edit": d.get("edit"), "model": face and face["model"],
            **({"face_id": face["id"]} if face and face["id"] is not None else {}),
            **({"restore": face["restore"]} if face and "restore" in face else {}),
            **({"faces": d["faces"]} if d.get("faces") else {})})

    def finish(self):
        from lipgraph.media.writer import output_errors
        with output_errors(self.p["path"]):
            return self._finish()

    def _finish(self):
        self.merge.finish()
        empty = RuntimeError(f"{self.p['path']}: no frames to write (empty video, or audio "
                             "shorter than one frame)")
        if self.writer is None and self.manifest is None:
            raise empty
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.manifest is not None:
            from lipgraph.media.segments import join_segments, remove_work_dir
            if not self.p["join"]:
                return ()           # one part of a split job: the driver joins the parts
            if not self.manifest.segments:
                raise empty
            join_segments(self.manifest, self.p["path"], self.p["audio"] or None,
                          self.p["sidecar"] or None, self.metadata(self.p),
                          on_temp=self.ctx.register_temp, progress=self.ctx.heartbeat)
            remove_work_dir(self.manifest.folder)
            return ()
        if self.sidecar:
            self.sidecar.close()
            self.sidecar = None
            os.replace(self.sidecar_tmp, self.p["sidecar"])
        return ()

    def close(self):
        if self.writer is not None:     # the run failed before the end: no partial output
            self.writer.abort()         # (completed segments stay, for --resume)
            self.writer = None
        if self.sidecar:
            self.sidecar.close()


def encoder_count(value) -> int:
    """`encoders: auto`: one segment encoder per 4 cores (each encoder threads itself), 1 to 4."""
    if value != "auto":
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores // 4))
