#!/usr/bin/env python3
"""Randomized fault trials: each trial runs the MuseTalk graph on a generated 3-second clip
(1-second segments) and strikes it with one random fault at a random moment, then checks
that nothing is left behind and that `--resume` gives what an uninterrupted run gives.

Faults: SIGKILL of the whole process group (a preempted machine), SIGKILL of one stage
process (the OOM killer), SIGINT (Ctrl-C) and SIGTERM of the runner, SIGSTOP of one stage
process (a hung driver: the stall watchdog must end the run), a corrupted or a truncated
input video.

Checks per trial: the exit status; seconds from the fault to the exit (<= 5 s for signals
and kills; for a hang, the stall timeout plus up to 15 s for the other stages to drain what
was queued); no process of the run left; /dev/shm as before
(after the next start, whose sweep is part of the guarantee); nothing at the output path
after a failure; no temporary file beside the output or in the temp folder; and, for kills
and signals, `--resume` then produces the same frames, timing and audio as the
uninterrupted run. Prints a table per fault kind and exits 1 if any trial failed.

    python bench/faults.py --trials 100 [--seed 1] [--kinds sigkill_group,sigint,...] [--keep DIR]
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

from _common import MUSETALK, ROOT, parser, work_folder, write_json
from lipgraph.media.audio import read_audio
from lipgraph.media.video import VideoReader
from lipgraph.tools.synthetic import graph_command, make_clip, model_sets, read_id, tiny_weights

PATTERN = "F" * 30 + "C" * 10 + "F" * 35              # 3 s at 25 fps
KINDS = ("sigkill_group", "sigkill_stage", "sigint", "sigterm", "stall", "corrupt", "truncate")
SIGNAL_KINDS = ("sigkill_group", "sigkill_stage", "sigint", "sigterm", "stall")
EXIT_LIMIT_S = 5.0
STALL_TIMEOUT_S = 4
STALL_DRAIN_S = 15


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def shm_entries() -> set:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def run_dirs() -> set:
    tmp = tempfile.gettempdir()
    return {n for n in os.listdir(tmp) if n.startswith("lipgraph-run-")}


def session_procs(sid: int) -> list:
    import psutil
    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return left


def stage_processes(pid: int) -> list:
    import psutil
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for k in kids:
        try:
            cmd = " ".join(k.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing" in cmd and "resource_tracker" not in cmd:
            out.append(k)
    return out


def segments_done(out: str) -> int:
    path = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.lipgraph", "manifest.json")
    try:
        with open(path) as f:
            return len(json.load(f)["segments"])
    except (OSError, ValueError, KeyError):
        return 0


def read(path):
    frames = list(VideoReader(path))
    return [f.image for f in frames], [f.time for f in frames], read_audio(path)


def damage(src: str, dst: str, kind: str, rng: random.Random) -> None:
    data = bytearray(open(src, "rb").read())
    if kind == "truncate":
        data = data[: int(len(data) * rng.uniform(0.4, 0.8))]
    else:                       # overwrite a few runs of bytes in the middle (packet data)
        for _ in range(3):
            at = int(len(data) * rng.uniform(0.3, 0.8))
            data[at:at + 64] = bytes(rng.randrange(256) for _ in range(64))
    with open(dst, "wb") as f:
        f.write(bytes(data))


class Bench:
    def __init__(self, folder: str, seed: int):
        self.folder = folder
        self.rng = random.Random(seed)
        weights = tiny_weights(os.path.join(folder, "models"))
        self.video, self.audio = make_clip(folder, PATTERN, name="clip")
        self.sets = model_sets(weights) + ["mux.codec=ffv1", "mux.pix_fmt=bgr0", "mux.segment_s=1.0"]
        self.ref = os.path.join(folder, "ref.mkv")
        t = time.perf_counter()
        done = subprocess.run(self.command(self.video, self.ref), cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the reference run failed:\n{done.stderr[-3000:]}")
        self.run_s = time.perf_counter() - t
        self.reference = read(self.ref)

    def command(self, video, out, resume=False):
        return graph_command(MUSETALK, video, self.audio, out, self.sets, "--quiet", "--no-trace",
                             f"--stall-timeout={STALL_TIMEOUT_S}", *(["--resume"] if resume else []))

    def compare(self, out: str) -> str | None:
        frames, times, audio = read(out)
        ref_frames, ref_times, ref_audio = self.reference
        if len(frames) != len(ref_frames):
            return f"{len(frames)} frames, expected {len(ref_frames)}"
        if times != ref_times:
            return "frame times differ"
        if len(audio) != len(ref_audio) or not np.allclose(audio, ref_audio, atol=1e-6):
            return "audio differs"
        for a, b in zip(frames, ref_frames):
            if read_id(a) != read_id(b):
                return f"frame {read_id(b)} replaced by {read_id(a)}"
            exact = PATTERN[read_id(a) % len(PATTERN)] == "C"
            diff = np.abs(a.astype(int) - b.astype(int)).max()
            if (exact and diff) or diff > 3:     # face frames: float rounding of other batch cuts
                return f"frame {read_id(a)} differs by {diff}"
        return None

    def trial(self, i: int, kind: str) -> dict:
        rec = {"kind": kind, "problems": []}
        out = os.path.join(self.folder, f"out-{i}.mkv")
        shm_before, dirs_before = shm_entries(), run_dirs()
        video = self.video
        if kind in ("corrupt", "truncate"):
            video = os.path.join(self.folder, f"damaged-{i}.mp4")
            damage(self.video, video, kind, self.rng)
        # SIGINT as a terminal delivers it: a run started from a background job inherits an
        # ignored SIGINT (and rightly keeps ignoring it), which is not the fault under test
        proc = subprocess.Popen(self.command(video, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=_default_sigint)
        sid = proc.pid
        fault_at = None
        if kind in SIGNAL_KINDS:
            # a random moment once stage processes run: before, during or after segments
            deadline = time.monotonic() + 60
            while not stage_processes(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(self.rng.uniform(0.0, max(0.5, self.run_s * 0.7)))
            if proc.poll() is not None:
                rec["note"] = "finished before the fault"
            else:
                fault_at = time.monotonic()
                self.strike(proc, kind)
        # a stopped process stalls the run only once the stages around it have drained what
        # was queued, which can take seconds of real work before the watchdog's clock starts
        limit = (STALL_TIMEOUT_S + STALL_DRAIN_S) if kind == "stall" else (
            EXIT_LIMIT_S if fault_at else 120)
        try:
            _, err = proc.communicate(timeout=limit + 30)
        except subprocess.TimeoutExpired:
            os.killpg(sid, signal.SIGKILL)
            _, err = proc.communicate()
            rec["problems"].append("hang")
        exit_s = time.monotonic() - fault_at if fault_at else None
        rec["exit_s"] = exit_s
        rec["rc"] = proc.returncode
        if kind == "stall":
            # the stopped process must not linger (the runner kills what it cannot stop)
            for p in stage_processes(proc.pid):
                p.kill()
        if exit_s is not None and exit_s > limit and "hang" not in rec["problems"]:
            rec["problems"].append(f"slow exit {exit_s:.1f}s")
        time.sleep(0.2)
        if kind != "sigkill_group":
            left = session_procs(sid)
            if left:
                rec["problems"].append(f"processes left: {left}")
        if kind == "sigkill_group":
            for pid in session_procs(sid):     # what the kill left is the kill's, not ours
                os.kill(pid, signal.SIGKILL)
        failed = proc.returncode != 0
        if fault_at and not failed and kind != "stall":
            rec["problems"].append("exit 0 after a fault")
        if failed and os.path.exists(out):
            rec["problems"].append("partial output at the output path")
        partials = [n for n in os.listdir(self.folder) if n.startswith(f".out-{i}.mkv") and ".partial" in n]
        if partials:
            rec["problems"].append(f"temporary files: {partials}")
        if kind in SIGNAL_KINDS and fault_at and failed:
            done = subprocess.run(self.command(video, out, resume=True), cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                rec["problems"].append(f"resume failed: {done.stderr.strip().splitlines()[-1:]}")
            else:
                mismatch = self.compare(out)
                if mismatch:
                    rec["problems"].append(f"resume mismatch: {mismatch}")
        elif kind in ("corrupt", "truncate") and not failed and not os.path.exists(out):
            rec["problems"].append("exit 0 without an output")
        # after a SIGKILL of everything, the resume run's start has swept what the kill left
        leaked_shm = shm_entries() - shm_before
        if leaked_shm:
            rec["problems"].append(f"/dev/shm left: {sorted(leaked_shm)[:4]}")
        leaked_dirs = run_dirs() - dirs_before
        if leaked_dirs:
            rec["problems"].append(f"run folders left: {sorted(leaked_dirs)}")
        for name in os.listdir(self.folder):
            if name.startswith((f"out-{i}.", f".out-{i}.", f"damaged-{i}")):
                path = os.path.join(self.folder, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        rec["stderr_tail"] = (err or "")[-300:]
        return rec

    def strike(self, proc, kind: str) -> None:
        if kind == "sigkill_group":
            os.killpg(proc.pid, signal.SIGKILL)
        elif kind in ("sigkill_stage", "stall"):
            kids = stage_processes(proc.pid)
            victim = self.rng.choice(kids) if kids else proc
            victim.send_signal(signal.SIGKILL if kind == "sigkill_stage" else signal.SIGSTOP)
        else:
            proc.send_signal(signal.SIGINT if kind == "sigint" else signal.SIGTERM)


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--keep", default="", help="working folder to keep (default: a temporary one)")
    ap.add_argument("--json", default="", help="write every trial's record here")
    args = ap.parse_args(argv)
    kinds = args.kinds.split(",")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    folder = work_folder(args.keep, "lipgraph-faults-")
    bench = Bench(folder, args.seed)
    print(f"reference run: {bench.run_s:.1f} s; {args.trials} trials, seed {args.seed}", flush=True)
    records = []
    for i in range(args.trials):
        kind = bench.rng.choice(kinds)
        rec = bench.trial(i, kind)
        records.append(rec)
        status = "ok" if not rec["problems"] else "FAIL " + "; ".join(rec["problems"])
        took = f" exit {rec['exit_s']:.2f}s" if rec.get("exit_s") is not None else ""
        print(f"[{i + 1}/{args.trials}] {kind:14s} rc={rec['rc']}{took} {rec.get('note', '')} {status}", flush=True)
    table = defaultdict(lambda: defaultdict(int))
    for r in records:
        row = table[r["kind"]]
        row["trials"] += 1
        row["failed"] += bool(r["problems"])
        for p in r["problems"]:
            key = ("hangs" if p == "hang" or p.startswith("slow exit") else
                   "leaks" if p.startswith(("processes", "/dev/shm", "run folders", "temporary")) else
                   "partial outputs" if p.startswith("partial") else
                   "resume mismatches" if p.startswith("resume") else "other")
            row[key] += 1
        if r.get("exit_s") is not None:
            row["max exit s"] = max(row.get("max exit s", 0), r["exit_s"])
    cols = ["trials", "failed", "hangs", "leaks", "partial outputs", "resume mismatches", "other", "max exit s"]
    print(f"\n{'kind':14s} " + " ".join(f"{c:>17s}" for c in cols))
    for kind in sorted(table):
        row = table[kind]
        cells = [f"{row[c]:17.2f}" if c == "max exit s" else f"{row[c]:17d}" for c in cols]
        print(f"{kind:14s} " + " ".join(cells))
    failed = sum(bool(r["problems"]) for r in records)
    print(f"\n{len(records)} trials, {failed} failed")
    if args.json:
        write_json(args.json, records)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
