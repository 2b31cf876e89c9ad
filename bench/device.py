#!/usr/bin/env python3
"""Device benchmark in one command: what a first session on a GPU machine should measure,
written to OUT/device.json and a readable OUT/device.md (README.md, "Benchmarks"):

  1. sanity      the MuseTalk graph in float16 and bfloat16 against float32 on one clip and
                 the same random models: PSNR of the face boxes (lossless outputs, boxes from
                 the sidecar), and whether anything outside the faces changed
  2. e2e         the MuseTalk graph on a generated 1080p clip, full-size random models: fps
                 end to end and of the model stages alone, the per-stage table, peak CUDA
                 memory per placement group
  3. latentsync  one LatentSync window at guidance 1.5 and 1.0, DeepCache on and off, at 256
                 and 512 px (bench/unet.py)
  4. cpu_side    the CPU stages alone, the model stages stood in (bench/cpu_side.py)

Each section is timed and fails on its own (its error and traceback are recorded, the others
still run). Graph runs and the LatentSync window run in subprocesses under time limits, so a
crash or a hang costs one section, within a budget for the whole run (8 minutes, sized for one
H100; `--reduced`: tiny models, small frames, few steps, under 3 minutes on a 2-core CPU). The
JSON is rewritten after every section; the exit status is 1 when any section failed. Random
weights measure the work and the numerics, never lip-sync quality.

One file over 400 lines on purpose: a GPU machine is lent for minutes, so everything it should
measure (its plan, time budget, the sections and their recovery) is one command to copy there;
the report's formatting lives apart in bench/device_report.py.

    python bench/device.py OUT [--device cuda|cpu] [--reduced] [--sections sanity,e2e,...]
                               [--keep DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from _common import MUSETALK, ROOT, parser, write_json
from device_report import DTYPES, SECTIONS, environment, markdown, mib

MODEL_STAGES = ("encode", "unet", "decode")

VIDEO_RUN = ("size", "frames", "face_run", "cutaway_run", "timeout")
LATENTSYNC_RUN = ("size", "frames", "steps", "resolutions", "timeout")


def _plan(models: str, sanity: tuple, e2e: tuple, latentsync: tuple, budget_s: int, reserve_s: int) -> dict:
    return {"models": models, "sanity": dict(zip(VIDEO_RUN, sanity)), "e2e": dict(zip(VIDEO_RUN, e2e)),
            "latentsync": dict(zip(LATENTSYNC_RUN, latentsync)), "budget_s": budget_s, "reserve_s": reserve_s}


# What each mode runs. Timeouts are per graph run (sanity: each of its three runs).
PLANS = {
    "full": _plan("full", sanity=((640, 360), 50, 20, 5, 100), e2e=((1920, 1080), 150, 40, 10, 180),
                  latentsync=("full", 16, 20, (256, 512), 240), budget_s=470, reserve_s=45),
    "reduced": _plan("tiny", sanity=((320, 240), 8, 5, 2, 120), e2e=((320, 240), 16, 6, 2, 120),
                     latentsync=("tiny", 4, 3, (64, 128), 120), budget_s=170, reserve_s=15),
}


def rate(n, seconds) -> float | None:
    return round(n / seconds, 3) if n and seconds else None


def key_lines(text: str, n: int = 25) -> str:
    """The end of a run's stderr without its routine notes, warnings and banners."""
    skip = ("warning:", "note:", "***", "Writing model shards")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(skip)]
    return "\n".join(lines[-n:])


class Budget:
    """A deadline for the whole run; each subprocess gets its own limit, cut short so the
    sections after it keep `reserve_s` each."""

    def __init__(self, seconds: float, reserve_s: float):
        self.deadline = time.monotonic() + seconds
        self.reserve_s = reserve_s

    def limit(self, own: float, later_sections: int) -> float:
        left = self.deadline - time.monotonic() - self.reserve_s * later_sections
        if left < 10:
            raise TimeoutError(f"no time left in the run's budget ({left:.0f} s after keeping "
                               f"{self.reserve_s:.0f} s for each later section)")
        return min(own, left)


def run_command(cmd: list[str], timeout: float, log: str) -> tuple[int, float, str]:
    """Run `cmd`, stderr and stdout into `log`; SIGTERM at `timeout` (the runner then stops
    its group processes and cleans up), SIGKILL 15 s later. Returns (rc, wall s, stderr)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = None
    wall = time.perf_counter() - t
    with open(log, errors="replace") as f:
        text = f.read()
    if rc is None:
        raise TimeoutError(f"timed out after {timeout:.0f} s: {' '.join(cmd[:3])} ...\n{key_lines(text)}")
    return rc, wall, text


class SectionFailed(RuntimeError):
    pass


def musetalk_paths(size: str, work: str) -> dict:
    """Random MuseTalk models as tools.synthetic.model_sets wants them. Full size comes from
    the lipgraph cache (built once, several GB, kept between runs); tiny is built in `work`.
    Neither has face-parsing weights, so both blend through the feathered mask."""
    from lipgraph.models.random_weights import ensure_random_weights, tiny_weights
    if size == "full":
        return dict(ensure_random_weights("full", False), parser="")
    return tiny_weights(os.path.join(work, "models-tiny"))


class Bench:
    def __init__(self, args):
        self.args = args
        self.reduced = args.reduced
        self.plan = PLANS["reduced" if args.reduced else "full"]
        self.device = args.device
        self.out = os.path.abspath(args.out)
        self.logs = os.path.join(self.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        # big files (models, clips, videos) stay out of OUT, which may be copied back
        self.work = args.keep or tempfile.mkdtemp(prefix="lipgraph-device-")
        os.makedirs(self.work, exist_ok=True)
        self.budget = Budget(self.plan["budget_s"], self.plan["reserve_s"])
        self.t0 = time.perf_counter()
        self.models_size = args.models or self.plan["models"]
        self._paths = None
        self._clips: dict = {}
        self.report = {
            "benchmark": "bench/device.py", "reduced": self.reduced, "device": self.device,
            "models": self.models_size, "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "environment": environment(self.device), "prepare": {}, "sections": {},
        }

    # inputs, made once and timed under "prepare"
    def paths(self) -> dict:
        if self._paths is None:
            t = time.perf_counter()
            try:
                self._paths = musetalk_paths(self.models_size, self.work)
            finally:
                self.report["prepare"]["models_s"] = round(time.perf_counter() - t, 2)
        return self._paths

    def clip(self, key: str) -> tuple[str, str, str]:
        """lipgraph.tools.synthetic's clip with the face scaled to the frame (0.8 of its
        height), so the Haar cascade finds it at 1080p as at 240p."""
        if key not in self._clips:
            from lipgraph.tools.synthetic import clip_pattern, make_clip
            c = self.plan[key]
            pattern = clip_pattern(c["frames"], c["face_run"], c["cutaway_run"])
            (w, h), t = c["size"], time.perf_counter()
            video, audio = make_clip(self.work, pattern, name=f"clip-{key}", width=w, height=h,
                                     side=int(0.8 * h))
            self.report["prepare"][f"clip_{key}_s"] = round(time.perf_counter() - t, 2)
            self._clips[key] = (video, audio, pattern)
        return self._clips[key]

    def clip_facts(self, key: str) -> dict:
        w, h = self.plan[key]["size"]
        pattern = self.clip(key)[2]
        return {"size": f"{w}x{h}", "frames": len(pattern), "face_frames": pattern.count("F")}

    def graph_run(self, label: str, key: str, output: str, dtype: str, sets: list[str], later: int) -> dict:
        """One run_graph.py run on clip `key`; its profile, wall time and stderr. Raises
        SectionFailed with the error's key lines when the run fails."""
        from lipgraph.tools.synthetic import graph_command, model_sets
        video, audio, _ = self.clip(key)
        timeout = self.budget.limit(self.plan[key]["timeout"], later)
        profile = os.path.join(self.work, f"{label}.profile.json")
        sets = model_sets(self.paths(), self.device) + sets
        cmd = graph_command(MUSETALK, video, audio, output, sets, "--profile", profile, "--no-trace",
                            "--quiet", "--device", self.device, "--dtype", dtype)
        rc, wall, text = run_command(cmd, timeout, os.path.join(self.logs, f"{label}.log"))
        if rc != 0:
            raise SectionFailed(f"{label}: run_graph.py exited {rc}\n{key_lines(text)}")
        with open(profile) as f:
            return {"profile": json.load(f), "profile_path": profile, "wall_s": wall, "stderr": text}

    # ----- sections -------------------------------------------------------------------
    def section_sanity(self, res: dict, later: int) -> None:
        res.update(clip=self.clip_facts("sanity"), models=self.models_size, runs={}, psnr_db={})
        outputs = {}
        for dtype in DTYPES:
            out = os.path.join(self.work, f"sanity-{dtype}.mkv")
            sets = ["mux.codec=ffv1", "mux.pix_fmt=bgr0", f"mux.sidecar={out}.jsonl"]
            try:
                r = self.graph_run(f"sanity-{dtype}", "sanity", out, dtype, sets, later)
            except Exception as exc:
                res["runs"][dtype] = {"status": "failed", "error": str(exc)}
                continue
            prof = r["profile"]
            res["runs"][dtype] = {"status": "ok", "wall_s": round(r["wall_s"], 2),
                                  "stream_wall_s": prof["stream_wall_s"],
                                  "fps": rate(prof["items_done"], prof["stream_wall_s"])}
            outputs[dtype] = out
        if "float32" not in outputs:
            raise SectionFailed("the float32 reference run failed: nothing to compare with\n"
                                + res["runs"]["float32"]["error"])
        failed = [d for d in DTYPES[1:] if d not in outputs]
        for dtype in DTYPES[1:]:
            if dtype in outputs:
                res["psnr_db"][dtype] = compare_faces(outputs["float32"], outputs[dtype])
        if failed:
            raise SectionFailed("failed in " + ", ".join(failed) + ": " +
                                " | ".join(res["runs"][d]["error"].splitlines()[0] for d in failed))

    def section_e2e(self, res: dict, later: int) -> None:
        from lipgraph.graph.profile import format_table
        dtype = "float16" if self.device.startswith("cuda") else "float32"
        res.update(clip=self.clip_facts("e2e"), models=self.models_size, dtype=dtype)
        r = self.graph_run("e2e", "e2e", os.path.join(self.work, "e2e.mp4"), dtype, [], later)
        prof, text = r["profile"], r["stderr"]
        shutil.copy(r["profile_path"], os.path.join(self.out, "e2e.profile.json"))
        st = prof["stages"]
        frames = prof["items_done"]
        faces = st["unet"]["items_in"]
        busy = {s: st[s]["busy_s"] for s in MODEL_STAGES}
        res.update(
            frames_out=frames, face_frames_to_models=faces,
            detector="haar" if "Haar cascade" in text else "s3fd",
            landmarks="detector box (no FAN)" if "FAN landmark weights not found" in text else "fan",
            parse="feathered mask (no BiSeNet)" if "face parsing weights" in text else "bisenet",
            fps_end_to_end=rate(frames, prof["stream_wall_s"]),
            fps_with_startup=rate(frames, r["wall_s"]),
            stream_wall_s=prof["stream_wall_s"], wall_s=round(r["wall_s"], 2),
            fps_model_stages=rate(faces, sum(busy.values())),
            model_stages_busy_s=busy,
            model_stages_note=("face frames / (encode + unet + decode busy s); the model stages "
                               "are threads of one process sharing the GPU, so a stage's busy "
                               "time may include waiting for another's kernels: a lower bound"),
            bottleneck=prof.get("bottleneck"),
            stages={n: stage_row(s) for n, s in st.items()},
            table=format_table(prof),
            peak_cuda_mib_by_group=cuda_by_group(prof),
            peak_rss_mib_total=mib(prof.get("peak_rss_total_bytes")),
        )

    def section_latentsync(self, res: dict, later: int) -> None:
        c = self.plan["latentsync"]
        res.update(models=c["size"], frames=c["frames"], steps=c["steps"],
                   resolutions=list(c["resolutions"]))
        part = os.path.join(self.work, "latentsync.part.json")
        if os.path.exists(part):
            os.remove(part)
        cmd = [sys.executable, os.path.abspath(__file__), self.out, "--device", self.device,
               "--worker", "latentsync", "--part", part] + (["--reduced"] if self.reduced else [])
        timeout = self.budget.limit(c["timeout"], later)
        err = None
        try:
            rc, _, text = run_command(cmd, timeout, os.path.join(self.logs, "latentsync.log"))
            if rc != 0:
                err = f"the LatentSync worker exited {rc}\n{key_lines(text)}"
        except TimeoutError as exc:
            err = str(exc)
        if os.path.exists(part):        # what it measured before any failure
            with open(part) as f:
                res.update(json.load(f))
        failed = [r for r, v in res.get("by_resolution", {}).items() if v.get("status") != "ok"]
        if err or failed:
            raise SectionFailed(err or f"failed at {', '.join(failed)} px")

    def section_cpu_side(self, res: dict, later: int) -> None:
        from cpu_side import measure_cpu_side
        res["method"] = "measured by bench/cpu_side.py (models made trivial)"
        res.update(measure_cpu_side(self.work, self.reduced))

    # ----- driver ---------------------------------------------------------------------
    def run(self, sections: list[str]) -> dict:
        for i, name in enumerate(sections):
            res: dict = {"status": "running"}
            self.report["sections"][name] = res
            self.log(f"{name} ...")
            t = time.perf_counter()
            try:
                getattr(self, f"section_{name}")(res, len(sections) - i - 1)
                res["status"] = "ok"
            except Exception as exc:
                res["status"] = "failed"
                res["error"] = str(exc)
                if not isinstance(exc, (SectionFailed, TimeoutError)):
                    res["traceback"] = traceback.format_exc()
            res["seconds"] = round(time.perf_counter() - t, 2)
            self.log(f"{name}: {res['status']} ({res['seconds']:.1f} s)"
                     + (f": {res['error'].splitlines()[0]}" if res.get("error") else ""))
            self.save()
        self.report["total_s"] = round(time.perf_counter() - self.t0, 2)
        self.save()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return self.report

    def log(self, line: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {line}", file=sys.stderr, flush=True)

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
        write_json(os.path.join(self.out, "device.json"), self.report)
        write_text(os.path.join(self.out, "device.md"), markdown(self.report))


def write_text(path: str, text: str) -> None:
    from lipgraph.media.partial import written_aside
    with written_aside(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def stage_row(s: dict) -> dict:
    n = s["items_in"] or s["items_out"]
    return {"group": s["group"], "items_in": s["items_in"], "items_out": s["items_out"],
            "busy_s": s["busy_s"], "ms_per_item": round(1e3 * s["busy_s"] / n, 3) if n else None,
            "capacity_ips": s["capacity_ips"], "utilization": s["utilization"]}


def cuda_by_group(prof: dict) -> dict:
    """Peak CUDA memory (MiB) of each placement group's process; "n/a" where none was used."""
    return {p["group"] + (f"#{p['replica']}" if p.get("replica") else ""):
            mib(p["cuda_peak_bytes"]) if p.get("cuda_peak_bytes") else "n/a"
            for p in prof.get("processes", [])}


# ----- section 1: the faces of two outputs ------------------------------------------------
def compare_faces(ref: str, test: str) -> dict:
    """PSNR of the face box (the float32 run's) of every face frame, and whether every pixel
    outside the faces (boxes and edited regions of both runs, 1 px margin) is identical.
    Each output's sidecar is beside it (OUTPUT.jsonl)."""
    import numpy as np

    from lipgraph.media.video import VideoReader
    from lipgraph.tools.ab_metrics import psnr
    from lipgraph.tools.ab_runs import read_sidecar
    ref_side, test_side = ({r["index"]: r for r in read_sidecar(p + ".jsonl")} for p in (ref, test))
    psnrs, identical, n, count, outside_same, boxes_match = [], 0, 0, 0, True, True
    with VideoReader(ref) as ref_frames, VideoReader(test) as test_frames:
        for i, (fa, fb) in enumerate(zip(ref_frames, test_frames)):
            a, b = fa.image, fb.image
            count += 1
            ra, rb = ref_side.get(i, {}), test_side.get(i, {})
            boxes_match &= ra.get("face") == rb.get("face")
            h, w = a.shape[:2]
            keep = np.ones((h, w), bool)
            for box in (ra.get("face"), ra.get("edit"), rb.get("face"), rb.get("edit")):
                if box:
                    x1, y1, x2, y2 = box
                    keep[max(0, y1 - 1):min(h, y2 + 1), max(0, x1 - 1):min(w, x2 + 1)] = False
            outside_same &= bool(np.array_equal(a[keep], b[keep]))
            if not ra.get("face"):
                continue
            x1, y1, x2, y2 = ra["face"]
            face = np.s_[max(0, y1):min(h, y2), max(0, x1):min(w, x2)]
            n += 1
            p = psnr(a[face], b[face])
            if math.isfinite(p):
                psnrs.append(p)
            else:                       # identical (or an empty box)
                identical += 1
    return {
        "min": round(min(psnrs), 2) if psnrs else None,
        "mean": round(float(np.mean(psnrs)), 2) if psnrs else None,
        "face_frames": n, "identical_face_frames": identical,
        "note": None if psnrs else "every face identical to float32 (PSNR infinite)",
        "outside_faces_identical": outside_same, "face_boxes_match": boxes_match,
        "frames_compared": count,
    }


# ----- section 3: the worker (own process: a CUDA fault or hang costs this section only) ----
def latentsync_worker(args) -> int:
    import torch

    import unet as bench_unet
    c = PLANS["reduced" if args.reduced else "full"]["latentsync"]
    device = args.device
    cuda = device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    res = {"dtype": str(dtype).replace("torch.", ""), "by_resolution": {}}
    t = time.perf_counter()
    models = bench_unet.build(c["size"], device, dtype)
    res["build_s"] = round(time.perf_counter() - t, 2)
    write_json(args.part, res)
    f = c["frames"]
    for r in c["resolutions"]:
        entry = res["by_resolution"][str(r)] = {"status": "running"}
        write_json(args.part, res)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            m = bench_unet.measure(c["size"], device, dtype, f, c["steps"], (r,), models=models)[r]
        except Exception as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc())
            if cuda:
                torch.cuda.empty_cache()
            write_json(args.part, res)
            continue
        runs = m["runs"]
        entry["windows"] = [
            {"guidance": g, "deepcache": ci, "window_s": round(s, 4),
             "per_frame_ms": round(1e3 * s / f, 2), "est_20_steps_s": round(est, 4)}
            for (g, ci), (s, est, _) in runs.items()]
        entry["deepcache"] = {}
        for g in (1.5, 1.0):
            ref, cached = runs[(g, 0)][2], runs[(g, 3)][2]
            dev = (cached - ref).abs()
            entry["deepcache"][str(g)] = {
                "speedup": round(runs[(g, 0)][0] / runs[(g, 3)][0], 3),
                "speedup_est_20_steps": round(runs[(g, 0)][1] / runs[(g, 3)][1], 3),
                "deviation_mean": float(dev.mean()), "deviation_max": float(dev.max()),
                "deviation_relative": float(dev.mean() / ref.abs().mean())}
        entry["guidance_off_speedup"] = round(runs[(1.5, 0)][0] / runs[(1.0, 0)][0], 3)
        entry["musetalk_window_s"] = round(m["musetalk_s"], 4)
        entry["seconds"] = round(time.perf_counter() - t, 2)
        entry["peak_cuda_mib"] = mib(torch.cuda.max_memory_allocated()) if cuda else "n/a"
        entry["status"] = "ok"
        write_json(args.part, res)
    return 0


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("out", help="folder for device.json, device.md, logs/ and the e2e profile")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--reduced", action="store_true",
                    help="tiny models, small frames, few steps (a check that runs on a CPU)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--models", choices=("tiny", "full"), default=None,
                    help="random MuseTalk models (default: full; tiny with --reduced)")
    ap.add_argument("--keep", default=None, help="work folder to keep (models, clips, outputs)")
    ap.add_argument("--worker", choices=("latentsync",), help=argparse.SUPPRESS)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.device is None:
        import torch
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.worker == "latentsync":
        return latentsync_worker(a)
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"--sections: unknown {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    bench = Bench(a)
    rep = bench.run(sections)
    failed = [n for n, s in rep["sections"].items() if s["status"] != "ok"]
    print(f"wrote {os.path.join(bench.out, 'device.json')} and device.md in {rep['total_s']:.1f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0       # the files hold every section's figures either way


if __name__ == "__main__":
    sys.exit(main())
