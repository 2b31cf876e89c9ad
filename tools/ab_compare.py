"""A/B comparison of two lip-sync graphs on one clip.

    python -m lipgraph.tools.ab_compare --graphs configs/graphs/musetalk.yaml configs/graphs/surgical.yaml \\
        --video in.mp4 --audio dub.wav --out ab/ --weights ~/MuseTalk/models --lossless \\
        [--syncnet syncnet_v2.model] [--set-a stage.p=v ...] [--set-b ...] [--set ...]

Runs both graphs one after the other (run_graph.py in a subprocess, so each run's timing is
its own), each writing OUT/<name>.mkv (with --lossless: FFV1, RGB) or .mp4 beside its profile,
per-frame sidecar and log, then reads the input and both outputs once, frame by frame in
lockstep (memory stays flat), and writes OUT/side_by_side.mp4 (input | A | B, labelled, with
the dub as its sound), OUT/report.json and OUT/report.md: per graph, per-stage throughput and
the bottleneck (from the profile), fallbacks with their reasons, identity outside the mouth
region, temporal stability of the mouth region, cutaway integrity and frame order, LSE-C /
LSE-D with SyncNet weights, and the same per face where several are dubbed (the sidecar's
`faces`); `ab_metrics` says how each is made. Figures that cannot be computed are listed
with the reason.

Exit status: 0, or 1 when a run failed (the report then says what it could and why not the rest).

The pieces: `ab_runs` (the runs), `ab_video` (the lockstep pass and the side-by-side video),
`ab_metrics` (how each figure is made), `ab_report` (report.json and report.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from .ab_metrics import PSNR_CAP_DB, SSIM_RADIUS, SSIM_SIGMA, TEMPORAL_SIZE, face_fallbacks, lse_figures
from .ab_report import clean, write_markdown
from .ab_runs import execute, plan_runs, profile_figures
from .ab_video import analyse


def compare(graphs: Sequence[str], video: str, audio: str, out_dir: str, *, weights: str | None = None,
            syncnet: str | None = None, sets: Sequence[str] = (), sets_a: Sequence[str] = (),
            sets_b: Sequence[str] = (), runner: str = "process", lossless: bool = False,
            lse_min_track: int = 100, lse_min_face: float = 100.0, cancel=None) -> dict:
    """Run both graphs, measure, write side_by_side.mp4, report.json and report.md; return the
    report. `cancel`: a threading.Event that stops the running graph (lipgraph.api.Cancelled)."""
    from lipgraph.media.audio import probe_audio
    from lipgraph.media.probe import probe_video
    if len(graphs) != 2:
        raise SystemExit("ab_compare: --graphs takes exactly two graph files")
    for what, p in (("video", video), ("audio", audio)):
        if not os.path.isfile(p):
            raise SystemExit(f"ab_compare: {what} file not found: {p}")
    if syncnet and not os.path.isfile(syncnet):
        raise SystemExit(f"ab_compare: SyncNet weights not found: {syncnet} (expected syncnet_v2.model)")
    video, audio = os.path.abspath(video), os.path.abspath(audio)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    runs = plan_runs(graphs, out_dir, sets, (sets_a, sets_b), lossless, weights)
    for run in runs:
        if cancel is not None and cancel.is_set():      # cancelled between the two runs
            from lipgraph.api import Cancelled
            raise Cancelled(f"{run.label} ({run.name}) cancelled before it started", exit_code=130)
        print(f"ab_compare: running {run.label} ({run.name}) -> {run.output}", file=sys.stderr, flush=True)
        execute(run, video, audio, weights, runner, cancel)
        if run.error:
            print(f"ab_compare: {run.label} failed, see {run.log}", file=sys.stderr)

    print("ab_compare: measuring", file=sys.stderr, flush=True)
    figures, missing = analyse(video, audio, runs, out_dir, lossless)

    model = None
    if syncnet:
        from lipgraph.models.syncnet import load_syncnet
        model = load_syncnet(syncnet)
    else:
        missing.append("LSE-C / LSE-D (both graphs): no SyncNet weights (pass --syncnet syncnet_v2.model)")

    info, ainfo = probe_video(video), probe_audio(audio)
    graphs_out = {}
    for run, own in zip(runs, (sets_a, sets_b)):
        g: dict[str, Any] = {"name": run.name, "graph": run.graph, "sets": run.sets, "sets_own": list(own),
                             "output": run.output, "sidecar": run.sidecar, "profile": run.profile,
                             "log": run.log, "exit_code": run.exit_code, "wall_s": run.wall_s,
                             "error": run.error}
        if os.path.isfile(run.profile):
            with open(run.profile, encoding="utf-8") as f:
                g.update(profile_figures(json.load(f)))
        else:
            missing.append(f"{run.label} ({run.name}): throughput and fallbacks: no profile at {run.profile}")
        g.update(figures.get(run.label, {}))
        face_fallbacks(g.get("faces") or {}, (g.get("fallbacks") or {}).get("frames"))
        if model is not None and run.exit_code == 0:
            g["lse"] = lse_figures(run, audio, model, min_track=lse_min_track, min_face_size=lse_min_face)
            if not g["lse"]["computed"]:
                missing.append(f"{run.label} ({run.name}): LSE-C / LSE-D: {g['lse']['why']}")
        elif model is None:
            g["lse"] = {"computed": False, "why": "no SyncNet weights (pass --syncnet syncnet_v2.model)"}
        else:
            g["lse"] = {"computed": False, "why": "the run failed"}
        graphs_out[run.label] = g

    sbs = os.path.join(out_dir, "side_by_side.mp4")
    report = {
        "input": {"video": video, "audio": audio, "frames": info.frame_count, "fps": info.fps,
                  "width": info.width, "height": info.height, "audio_s": ainfo.duration_s},
        "settings": {"lossless": lossless, "runner": runner, "weights": weights, "syncnet": syncnet,
                     "common_sets": list(sets), "psnr_cap_db": PSNR_CAP_DB,
                     "ssim": {"sigma": SSIM_SIGMA, "taps": 2 * SSIM_RADIUS + 1, "on": "BT.601 luma"},
                     "temporal_size": TEMPORAL_SIZE,
                     "lse": {"min_track": lse_min_track, "min_face_size": lse_min_face, "vshift": 15}},
        "graphs": graphs_out,
        "side_by_side": sbs if os.path.isfile(sbs) else None,
        "not_computed": missing,
    }
    report = clean(report)
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, allow_nan=False)
    write_markdown(report, os.path.join(out_dir, "report.md"))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lipgraph.tools.ab_compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graphs", nargs=2, required=True, metavar=("A.yaml", "B.yaml"))
    p.add_argument("--video", required=True)
    p.add_argument("--audio", required=True, help="the dub (new audio track)")
    p.add_argument("--out", required=True, help="folder for outputs and the report")
    p.add_argument("--weights", default=None, help="weights folder passed to both graphs")
    p.add_argument("--syncnet", default=None, metavar="PATH", help="syncnet_v2.model for LSE-C / LSE-D")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="STAGE.PARAM=VALUE",
                   help="param override for both graphs (repeatable)")
    p.add_argument("--set-a", dest="sets_a", action="append", default=[], metavar="STAGE.PARAM=VALUE")
    p.add_argument("--set-b", dest="sets_b", action="append", default=[], metavar="STAGE.PARAM=VALUE")
    p.add_argument("--runner", choices=("process", "inline"), default="process")
    p.add_argument("--lossless", action="store_true", help="FFV1 RGB outputs: cutaways compared exactly")
    p.add_argument("--lse-min-track", type=int, default=100,
                   help="SyncNet scores face tracks longer than this many frames at 25 fps (default 100)")
    p.add_argument("--lse-min-face", type=float, default=100.0,
                   help="... whose mean face box side exceeds this many pixels (default 100)")
    args = p.parse_args(argv)
    report = compare(args.graphs, args.video, args.audio, args.out, weights=args.weights,
                     syncnet=args.syncnet, sets=args.sets, sets_a=args.sets_a, sets_b=args.sets_b,
                     runner=args.runner, lossless=args.lossless, lse_min_track=args.lse_min_track,
                     lse_min_face=args.lse_min_face)
    print(f"ab_compare: report in {os.path.join(os.path.abspath(args.out), 'report.md')}", file=sys.stderr)
    for line in report["not_computed"]:
        print(f"ab_compare: not computed: {line}", file=sys.stderr)
    failed = [g for g in report["graphs"].values() if g["exit_code"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
