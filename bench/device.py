#!/usr/bin/env python3
"""Device benchmark in one command: what a first session on a GPU machine should measure,
written to OUT/device.json and a readable OUT/device.md.

  1. sanity      the MuseTalk graph in float16 and bfloat16 against float32 on the same clip
                 and the same random models: PSNR of the face box of every face frame
                 (lossless FFV1 outputs, boxes from the sidecar), and a check that nothing
                 outside the faces changed
  2. e2e         the MuseTalk graph on a generated 1080p clip (face runs and cutaways) with
                 full-size random models: fps end to end, fps of the model stages alone
                 (encode + unet + decode busy time), the per-stage table, peak CUDA memory
                 per placement group
  3. latentsync  one LatentSync window (16 frames, 20 steps) at guidance 1.5 and 1.0, with
                 and without DeepCache (interval 3), at 256 and 512 px (bench/unet.py)
  4. cpu_side    the CPU stages alone (decode, Haar detection, crop, blend, mux, ...): from
                 bench/cpu_side.py when it exists (see `cpu_side_hook`), else derived from
                 section 2's profile and labelled so

Each section is timed and fails on its own: an error is recorded with its traceback and the
other sections still run. Graph runs and the LatentSync section run in subprocesses with
time limits, so a crash or a hang costs one section, not the session. The whole run keeps to
a time budget (8 minutes, sized for one H100; `--reduced`: under 3 minutes on a 2-core CPU).
The JSON is rewritten after every section, so a run killed midway leaves what it measured;
the exit status is 1 when any section failed.

Models have random weights (full size; `--reduced`: tiny models, small frames, few steps):
they measure the work and the numerics, never lip-sync quality.

    python bench/device.py OUT [--device cuda|cpu] [--reduced] [--sections sanity,e2e,...]
                               [--keep DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GRAPH = os.path.join(ROOT, "configs", "graphs", "musetalk.yaml")
SECTIONS = ("sanity", "e2e", "latentsync", "cpu_side")
MODEL_STAGES = ("whisper", "encode", "unet", "decode")      # always run a network
DTYPES = ("float32", "float16", "bfloat16")

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


# ----- small helpers ----------------------------------------------------------------------
def mib(n) -> float | None:
    return None if n is None else round(n / 2**20, 1)


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


def run_command(cmd: list[str], timeout: float, log: str, env: dict | None = None) -> tuple[int, float, str]:
    """Run `cmd`, stderr and stdout into `log`; SIGTERM at `timeout` (the runner then stops
    its group processes and cleans up), SIGKILL 15 s later. Returns (rc, wall s, stderr)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
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


# ----- inputs -----------------------------------------------------------------------------
def musetalk_paths(size: str, work: str) -> dict:
    """Random MuseTalk models as tools.synthetic.model_sets wants them. Full size comes from
    the lipgraph cache (built once, several GB, kept between runs); tiny is built in `work`.
    Neither has face-parsing weights, so both blend through the feathered mask."""
    if size == "full":
        from lipgraph.models.random_weights import ensure_random_weights
        root = ensure_random_weights("full", False)["root"]
    else:
        from lipgraph.models.random_weights import tiny_weights
        root = tiny_weights(os.path.join(work, "models-tiny"))["root"]
    return {"root": root, "unet": os.path.join(root, "musetalkV15", "unet.pth"),
            "unet_config": os.path.join(root, "musetalkV15", "musetalk.json"),
            "vae": os.path.join(root, "sd-vae"), "whisper": os.path.join(root, "whisper"),
            "parser": ""}


def make_face_clip(folder: str, name: str, pattern: str, width: int, height: int) -> tuple[str, str]:
    """lipgraph.tools.synthetic's clip with the face scaled to the frame (0.8 of its height), so the
    Haar cascade finds it at 1080p as at 240p."""
    from lipgraph.media.writer import VideoWriter
    from lipgraph.tools.synthetic import cutaway_frame, face_frame, speech_like, write_wav
    video = os.path.join(folder, f"{name}.mp4")
    side = int(0.8 * height)
    with VideoWriter(video, width, height, 25.0, crf=12, preset="veryfast") as w:
        for i, c in enumerate(pattern):
            w.write(face_frame(i, width, height, side) if c == "F" else cutaway_frame(i, width, height))
    audio = os.path.join(folder, f"{name}.wav")
    write_wav(audio, speech_like(len(pattern) / 25.0))
    return video, audio


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
        self.e2e_profile = None
        self.e2e_kinds: dict = {}
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
        if key not in self._clips:
            from lipgraph.tools.synthetic import clip_pattern
            c = self.plan[key]
            pattern = clip_pattern(c["frames"], c["face_run"], c["cutaway_run"])
            t = time.perf_counter()
            video, audio = make_face_clip(self.work, f"clip-{key}", pattern, *c["size"])
            self.report["prepare"][f"clip_{key}_s"] = round(time.perf_counter() - t, 2)
            self._clips[key] = (video, audio, pattern)
        return self._clips[key]

    def graph_run(self, label: str, video: str, audio: str, output: str, dtype: str | None,
                  sets: list[str], later: int) -> dict:
        """One run_graph.py run; its profile, wall time and stderr. Raises SectionFailed with
        the error's key lines when the run fails."""
        from lipgraph.tools.synthetic import graph_command, model_sets
        timeout = self.budget.limit(self.plan[label.split(":")[0]]["timeout"], later)
        profile = os.path.join(self.work, f"{label.replace(':', '-')}.profile.json")
        extra = ["--profile", profile, "--no-trace", "--quiet", "--device", self.device]
        if dtype:
            extra += ["--dtype", dtype]
        cmd = graph_command(GRAPH, video, audio, output, model_sets(self.paths(), self.device) + sets,
                            *extra)
        log = os.path.join(self.logs, f"{label.replace(':', '-')}.log")
        rc, wall, text = run_command(cmd, timeout, log)
        if rc != 0:
            raise SectionFailed(f"{label}: run_graph.py exited {rc}\n{key_lines(text)}")
        with open(profile) as f:
            prof = json.load(f)
        return {"profile": prof, "profile_path": profile, "wall_s": wall, "stderr": text}

    # ----- sections -------------------------------------------------------------------
    def section_sanity(self, res: dict, later: int) -> None:
        video, audio, pattern = self.clip("sanity")
        w, h = self.plan["sanity"]["size"]
        res.update(clip={"size": f"{w}x{h}", "frames": len(pattern), "face_frames": pattern.count("F")},
                   models=self.models_size, runs={}, psnr_db={})
        outputs = {}
        for dtype in DTYPES:
            out = os.path.join(self.work, f"sanity-{dtype}.mkv")
            sidecar = out + ".jsonl"
            sets = ["mux.codec=ffv1", "mux.pix_fmt=bgr0", f"mux.sidecar={sidecar}"]
            try:
                r = self.graph_run(f"sanity:{dtype}", video, audio, out, dtype, sets, later)
            except Exception as exc:
                res["runs"][dtype] = {"status": "failed", "error": str(exc)}
                continue
            prof = r["profile"]
            res["runs"][dtype] = {"status": "ok", "wall_s": round(r["wall_s"], 2),
                                  "stream_wall_s": prof["stream_wall_s"],
                                  "fps": _rate(prof["items_done"], prof["stream_wall_s"])}
            outputs[dtype] = (out, sidecar)
        if "float32" not in outputs:
            raise SectionFailed("the float32 reference run failed: nothing to compare with\n"
                                + res["runs"]["float32"]["error"])
        failed = []
        for dtype in ("float16", "bfloat16"):
            if dtype not in outputs:
                failed.append(dtype)
                continue
            res["psnr_db"][dtype] = compare_faces(outputs["float32"], outputs[dtype])
        if failed:
            raise SectionFailed("failed in " + ", ".join(failed) + ": " +
                                " | ".join(res["runs"][d]["error"].splitlines()[0] for d in failed))

    def section_e2e(self, res: dict, later: int) -> None:
        video, audio, pattern = self.clip("e2e")
        w, h = self.plan["e2e"]["size"]
        dtype = "float16" if self.device.startswith("cuda") else "float32"
        res.update(clip={"size": f"{w}x{h}", "frames": len(pattern), "face_frames": pattern.count("F")},
                   models=self.models_size, dtype=dtype)
        out = os.path.join(self.work, "e2e.mp4")
        r = self.graph_run("e2e", video, audio, out, dtype, [], later)
        prof = r["profile"]
        self.e2e_profile = prof
        text = r["stderr"]
        self.e2e_kinds = {
            "detector": "haar" if "Haar cascade" in text else "s3fd",
            "landmarks": "detector box (no FAN)" if "FAN landmark weights not found" in text else "fan",
            "parse": "feathered mask (no BiSeNet)" if "face parsing weights" in text else "bisenet",
        }
        shutil.copy(r["profile_path"], os.path.join(self.out, "e2e.profile.json"))
        st = prof["stages"]
        frames = prof["items_done"]
        faces = st["unet"]["items_in"]
        model_busy = sum(st[s]["busy_s"] for s in ("encode", "unet", "decode"))
        res.update(
            frames_out=frames, face_frames_to_models=faces, **self.e2e_kinds,
            fps_end_to_end=_rate(frames, prof["stream_wall_s"]),
            fps_with_startup=_rate(frames, r["wall_s"]),
            stream_wall_s=prof["stream_wall_s"], wall_s=round(r["wall_s"], 2),
            fps_model_stages=_rate(faces, model_busy),
            model_stages_busy_s={s: st[s]["busy_s"] for s in ("encode", "unet", "decode")},
            model_stages_note=("face frames / (encode + unet + decode busy s); the model stages "
                               "are threads of one process sharing the GPU, so a stage's busy "
                               "time may include waiting for another's kernels: a lower bound"),
            bottleneck=prof.get("bottleneck"),
            stages={n: stage_row(s) for n, s in st.items()},
            table=format_table(prof),
            peak_cuda_mib_by_group=cuda_by_group(prof, self.device),
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
        hook = cpu_side_hook()
        if hook is not None:
            video, audio, _ = self.clip("e2e")
            res["method"] = "measured by bench/cpu_side.py (models made trivial)"
            res.update(hook(video=video, audio=audio, work=self.work, device=self.device,
                            reduced=self.reduced))
            return
        if self.e2e_profile is None:
            raise SectionFailed("no pass-through mode for the model stages, and section 2 (e2e) "
                                "left no profile to derive the CPU side from")
        res.update(cpu_side_from_profile(self.e2e_profile, self.e2e_kinds))

    # ----- driver ---------------------------------------------------------------------
    def run(self, sections: list[str]) -> dict:
        for i, name in enumerate(sections):
            res: dict = {"status": "running"}
            self.report["sections"][name] = res
            later = len(sections) - i - 1
            print(f"[{time.perf_counter() - self.t0:6.1f} s] {name} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            try:
                getattr(self, f"section_{name}")(res, later)
                res["status"] = "ok"
            except Exception as exc:
                res["status"] = "failed"
                res["error"] = str(exc)
                if not isinstance(exc, (SectionFailed, TimeoutError)):
                    res["traceback"] = traceback.format_exc()
            res["seconds"] = round(time.perf_counter() - t, 2)
            print(f"[{time.perf_counter() - self.t0:6.1f} s] {name}: {res['status']} "
                  f"({res['seconds']:.1f} s)" + (f": {res['error'].splitlines()[0]}"
                                                  if res.get("error") else ""),
                  file=sys.stderr, flush=True)
            self.save()
        self.report["total_s"] = round(time.perf_counter() - self.t0, 2)
        self.save()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return self.report

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
        write_atomic(os.path.join(self.out, "device.json"), json.dumps(self.report, indent=1))
        write_atomic(os.path.join(self.out, "device.md"), markdown(self.report))


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _rate(n, seconds) -> float | None:
    return round(n / seconds, 3) if n and seconds else None


def format_table(prof: dict) -> str:
    from lipgraph.graph.profile import format_table as fmt
    return fmt(prof)


def stage_row(s: dict) -> dict:
    n = s["items_in"] or s["items_out"]
    return {"group": s["group"], "items_in": s["items_in"], "items_out": s["items_out"],
            "busy_s": s["busy_s"], "ms_per_item": round(1e3 * s["busy_s"] / n, 3) if n else None,
            "capacity_ips": s["capacity_ips"], "utilization": s["utilization"]}


def cuda_by_group(prof: dict, device: str) -> dict:
    """Peak CUDA memory (MiB) of each placement group's process; "n/a" where none was used."""
    out = {}
    for p in prof.get("processes", []):
        key = p["group"] + (f"#{p['replica']}" if p.get("replica") else "")
        v = p.get("cuda_peak_bytes")
        out[key] = mib(v) if v else "n/a"
    return out


# ----- section 1: the faces of two outputs ------------------------------------------------
def read_sidecar(path: str) -> dict[int, dict]:
    with open(path) as f:
        return {d["index"]: d for d in map(json.loads, filter(str.strip, f))}


def iter_frames(path: str):
    import av
    with av.open(path) as c:
        for frame in c.decode(video=0):
            yield frame.to_ndarray(format="bgr24")


def compare_faces(ref: tuple[str, str], test: tuple[str, str]) -> dict:
    """PSNR of the face box (the float32 run's) of every face frame, and whether every pixel
    outside the faces (boxes and edited regions of both runs, 1 px margin) is identical."""
    import numpy as np
    ref_side, test_side = read_sidecar(ref[1]), read_sidecar(test[1])
    psnr, identical, n, outside_same, boxes_match = [], 0, 0, True, True
    count = 0
    for i, (a, b) in enumerate(zip(iter_frames(ref[0]), iter_frames(test[0]))):
        count += 1
        ra, rb = ref_side.get(i, {}), test_side.get(i, {})
        if ra.get("face") != rb.get("face"):
            boxes_match = False
        h, w = a.shape[:2]
        keep = np.ones((h, w), bool)
        for box in (ra.get("face"), ra.get("edit"), rb.get("face"), rb.get("edit")):
            if box:
                x1, y1, x2, y2 = box
                keep[max(0, y1 - 1):min(h, y2 + 1), max(0, x1 - 1):min(w, x2 + 1)] = False
        if not np.array_equal(a[keep], b[keep]):
            outside_same = False
        if not ra.get("face"):
            continue
        x1, y1, x2, y2 = ra["face"]
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
        fa = a[y1:y2, x1:x2].astype(np.float64)
        fb = b[y1:y2, x1:x2].astype(np.float64)
        n += 1
        mse = float(np.mean((fa - fb) ** 2)) if fa.size else 0.0
        if mse == 0:
            identical += 1
            continue
        psnr.append(10 * np.log10(255.0 ** 2 / mse))
    return {
        "min": round(min(psnr), 2) if psnr else None,
        "mean": round(float(np.mean(psnr)), 2) if psnr else None,
        "face_frames": n, "identical_face_frames": identical,
        "note": None if psnr else "every face identical to float32 (PSNR infinite)",
        "outside_faces_identical": outside_same, "face_boxes_match": boxes_match,
        "frames_compared": count,
    }


# ----- section 3: the worker (own process: a CUDA fault or hang costs this section only) ----
def latentsync_worker(args) -> int:
    import torch
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import unet as bench_unet
    c = PLANS["reduced" if args.reduced else "full"]["latentsync"]
    device = args.device
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    res = {"dtype": str(dtype).replace("torch.", ""), "by_resolution": {}}

    def save():
        write_atomic(args.part, json.dumps(res))

    t = time.perf_counter()
    models = bench_unet.build(c["size"], device, dtype)
    res["build_s"] = round(time.perf_counter() - t, 2)
    save()
    f = c["frames"]
    for r in c["resolutions"]:
        entry = {"status": "running"}
        res["by_resolution"][str(r)] = entry
        save()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            m = bench_unet.measure(c["size"], device, dtype, f, c["steps"], (r,), models=models)[r]
        except Exception as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc())
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            save()
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
        entry["peak_cuda_mib"] = (mib(torch.cuda.max_memory_allocated())
                                  if device.startswith("cuda") else "n/a")
        entry["status"] = "ok"
        save()
    return 0


# ----- section 4 --------------------------------------------------------------------------
def cpu_side_hook():
    """bench/cpu_side.py, when someone adds it, measures the CPU side for real (the graph
    with the model stages made trivial). It is used when it defines
    `measure_cpu_side(video, audio, work, device, reduced) -> dict` (with at least "fps");
    its dict goes into this section as it is."""
    path = os.path.join(ROOT, "bench", "cpu_side.py")
    if not os.path.exists(path):
        return None
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_cpu_side", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, "measure_cpu_side", None)


def cpu_side_from_profile(prof: dict, kinds: dict) -> dict:
    """The stages that run no network in section 2's run, their busy time per frame, and the
    frame rate they alone would allow (the busiest one's)."""
    model = set(MODEL_STAGES)
    if kinds.get("detector") != "haar":
        model.add("detect")
    if kinds.get("landmarks") == "fan":
        model.add("landmarks")
    if kinds.get("parse") == "bisenet":
        model.add("parse")
    frames = prof["items_done"]
    stages, total_ms, slowest = {}, 0.0, None
    for name, s in prof["stages"].items():
        if name in model or not s["busy_s"]:
            continue
        per_frame = 1e3 * s["busy_s"] / frames if frames else None
        row = stage_row(s)
        row["ms_per_frame"] = round(per_frame, 3) if per_frame is not None else None
        stages[name] = row
        total_ms += per_frame or 0.0
        load = s["busy_s"] / max(1, s.get("workers", 1))
        if slowest is None or load > slowest[1]:
            slowest = (name, load)
    return {
        "method": ("derived from section 2's profile (no pass-through mode for the model stages): "
                   "busy time of the stages that run no network; not a separate run"),
        "frames": frames, "stages": stages,
        "cpu_ms_per_frame_total": round(total_ms, 3),
        "fps_bound": _rate(frames, slowest[1]) if slowest else None,
        "fps_bound_stage": slowest[0] if slowest else None,
        "fps_bound_note": "frames / busy s of the busiest CPU stage: the rate with free models",
        "fps_serial": round(1e3 / total_ms, 3) if total_ms else None,
        "counted_as_models": sorted(model),
    }


# ----- environment ------------------------------------------------------------------------
def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "hostname": platform.node()}
    try:
        env["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        import torch
        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                   torch_threads=torch.get_num_threads(), cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            idx = (torch.device(device).index or 0) if device.startswith("cuda") else 0
            p = torch.cuda.get_device_properties(idx)
            env.update(cuda_device=p.name, cuda_capability=f"{p.major}.{p.minor}",
                       cuda_memory_mib=mib(p.total_memory), cuda_devices=torch.cuda.device_count(),
                       cudnn=torch.backends.cudnn.version())
    except Exception as exc:           # a broken CUDA setup is a finding, not a crash
        env["torch_error"] = f"{type(exc).__name__}: {exc}"
    for mod in ("diffusers", "transformers", "av", "cv2", "numpy"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0:
            env["nvidia_smi"] = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10)
        if rev.returncode == 0:
            env["git"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return env


# ----- the readable report ----------------------------------------------------------------
def _f(v, spec="{:.2f}") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return spec.format(v)


def markdown(rep: dict) -> str:
    env, secs = rep["environment"], rep["sections"]
    lines = [f"# Device benchmark ({'reduced' if rep['reduced'] else 'full'})", "",
             f"{rep['started_at']}, device `{rep['device']}`, {rep['models']} random models "
             "(not lip-synced: timings and numerics only), "
             f"{_f(rep.get('total_s') or rep.get('elapsed_s'), '{:.1f}')} s in all.", "",
             "## Environment", "", "| | |", "|---|---|"]
    for k, v in env.items():
        lines.append(f"| {k} | {v} |")
    if rep.get("prepare"):
        lines += ["", "Preparation: " + ", ".join(f"{k} {v} s" for k, v in rep["prepare"].items())]
    lines += ["", "## Sections", "", "| section | status | seconds | error |", "|---|---|---|---|"]
    for name in SECTIONS:
        s = secs.get(name)
        if s is None:
            continue
        err = (s.get("error") or "").splitlines()[0][:120] if s.get("error") else ""
        lines.append(f"| {name} | {s['status']} | {_f(s.get('seconds'), '{:.1f}')} | {err} |")

    s = secs.get("sanity")
    if s:
        lines += ["", "## 1. CUDA sanity: float16 and bfloat16 against float32", ""]
        if s.get("clip"):
            c = s["clip"]
            lines.append(f"Clip {c['size']}, {c['frames']} frames ({c['face_frames']} with a face); "
                         "PSNR over the face box of each face frame.")
            lines.append("")
        lines += ["| dtype | run | wall s | fps | PSNR min dB | PSNR mean dB | identical faces "
                  "| outside faces identical |", "|---|---|---|---|---|---|---|---|"]
        for dt in DTYPES:
            r = (s.get("runs") or {}).get(dt)
            if not r:
                continue
            p = (s.get("psnr_db") or {}).get(dt, {})
            ident = f"{p['identical_face_frames']}/{p['face_frames']}" if p else "-"
            lines.append(f"| {dt} | {r['status']} | {_f(r.get('wall_s'), '{:.1f}')} | "
                         f"{_f(r.get('fps'), '{:.1f}')} | {_f(p.get('min'))} | {_f(p.get('mean'))} | "
                         f"{ident} | {p.get('outside_faces_identical', '-')} |")

    s = secs.get("e2e")
    if s and s.get("stages"):
        c = s["clip"]
        lines += ["", "## 2. MuseTalk end to end", "",
                  f"Clip {c['size']}, {c['frames']} frames ({c['face_frames']} with a face), "
                  f"{s['models']} models, {s['dtype']}; detector {s.get('detector')}, "
                  f"landmarks {s.get('landmarks')}, parse {s.get('parse')}.", "",
                  f"- fps end to end (streaming): **{_f(s['fps_end_to_end'], '{:.1f}')}**"
                  f" ({_f(s['fps_with_startup'], '{:.1f}')} with process start and model loading)",
                  f"- fps of the model stages alone (encode + unet + decode busy): "
                  f"**{_f(s['fps_model_stages'], '{:.1f}')}** face frames/s",
                  f"- bottleneck: {(s.get('bottleneck') or {}).get('stage')}",
                  "- peak CUDA memory per group (MiB): " + ", ".join(
                      f"{g} {v}" for g, v in s["peak_cuda_mib_by_group"].items()),
                  "", "```", s["table"], "```"]

    s = secs.get("latentsync")
    if s and s.get("by_resolution"):
        lines += ["", "## 3. LatentSync window", "",
                  f"{s['models']} UNet3D, {s['frames']} frames, {s['steps']} steps, "
                  f"{s.get('dtype')}; model built in {_f(s.get('build_s'), '{:.1f}')} s.", "",
                  "| px | guidance | DeepCache | window s | per frame ms | 20-step est. s |",
                  "|---|---|---|---|---|---|"]
        for r, e in s["by_resolution"].items():
            for wnd in e.get("windows", []):
                lines.append(f"| {r} | {wnd['guidance']} | {wnd['deepcache'] or 'off'} | "
                             f"{_f(wnd['window_s'], '{:.3f}')} | {_f(wnd['per_frame_ms'], '{:.1f}')} | "
                             f"{_f(wnd['est_20_steps_s'], '{:.3f}')} |")
            if e.get("status") != "ok":
                lines.append(f"| {r} | failed: {(e.get('error') or '').splitlines()[0][:100]} | | | | |")
        lines.append("")
        for r, e in s["by_resolution"].items():
            if e.get("status") != "ok":
                continue
            dc = e["deepcache"]
            lines.append(f"- {r} px: DeepCache speed-up {dc['1.5']['speedup']:.2f}x (g 1.5), "
                         f"{dc['1.0']['speedup']:.2f}x (g 1.0), relative deviation "
                         f"{dc['1.5']['deviation_relative']:.3%}; guidance off "
                         f"{e['guidance_off_speedup']:.2f}x faster; MuseTalk on the same window "
                         f"{e['musetalk_window_s']:.3f} s; peak CUDA memory {e['peak_cuda_mib']} MiB")

    s = secs.get("cpu_side")
    if s and s.get("method"):
        lines += ["", "## 4. CPU side alone", "", f"Method: {s['method']}.", ""]
        if s.get("stages"):
            lines += ["| stage | group | items | busy s | ms/item | ms/frame |", "|---|---|---|---|---|---|"]
            for n, r in s["stages"].items():
                lines.append(f"| {n} | {r['group']} | {r['items_in'] or r['items_out']} | "
                             f"{_f(r['busy_s'], '{:.3f}')} | {_f(r['ms_per_item'], '{:.2f}')} | "
                             f"{_f(r['ms_per_frame'], '{:.2f}')} |")
            lines += ["", f"- CPU ms per frame, all CPU stages: {_f(s['cpu_ms_per_frame_total'])}",
                      f"- fps the CPU side allows (busiest stage, {s['fps_bound_stage']}): "
                      f"**{_f(s['fps_bound'], '{:.1f}')}**; one core doing it all: "
                      f"{_f(s['fps_serial'], '{:.1f}')}"]
        elif s.get("fps"):
            lines.append(f"- fps: **{_f(s['fps'], '{:.1f}')}**")

    errs = [(n, s) for n, s in secs.items() if s.get("error")]
    if errs:
        lines += ["", "## Errors", ""]
        for n, s in errs:
            lines += [f"### {n}", "", "```", s.get("traceback") or s["error"], "```", ""]
        for dt, r in (secs.get("sanity", {}).get("runs") or {}).items():
            if r.get("status") == "failed":
                lines += [f"### sanity, {dt}", "", "```", r["error"], "```", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
