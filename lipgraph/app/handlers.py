"""What the web app does, as plain functions of plain values (the Gradio layout in `layout`
only wires them to components): check uploads, queue runs and A/B comparisons, and turn a
job's progress and profile into what the page shows."""
from __future__ import annotations

import dataclasses
import html
import os
import shutil

from lipgraph.launch import RANDOM_BANNER, UsageError

from .jobs import Job, JobQueue

GRAPHS = {"MuseTalk": "musetalk", "LatentSync": "surgical"}
FACES = ("largest", "speaker")      # or typed: track ids "1,3", a point "0.25,0.5" (--face)


@dataclasses.dataclass
class AppConfig:
    jobs_dir: str                     # per-job folders go here
    weights: str | None = None        # the weights folder offered by default
    keep_s: float = 3600.0            # a job's folder is removed this long after it ends
    max_upload_mb: float = 500.0      # larger uploads are refused


@dataclasses.dataclass
class RunRequest:
    video: str | None
    audio: str | None
    model: str = "MuseTalk"
    weights: str | None = None
    random_weights: bool = False
    device: str | None = None
    dtype: str | None = None
    detect_every: int | None = None
    steps: int | None = None
    guidance: float | None = None
    fps: float | None = None
    face: str | None = None           # as --face: largest | speaker | ID[,ID...] | X.,Y.


def check_upload(path: str | None, what: str, max_mb: float) -> str:
    """The uploaded file's path, or UsageError: none given, or over the size limit."""
    if not path:
        raise UsageError(f"no {what} file given (upload one, or use the sample)")
    if not os.path.isfile(path):
        raise UsageError(f"{what} file not found: {path}")
    size_mb = os.path.getsize(path) / 2**20
    if size_mb > max_mb:
        raise UsageError(f"{os.path.basename(path)}: {size_mb:.3g} MB is over this app's "
                         f"limit of {max_mb:g} MB")
    return path


def make_sample(folder: str) -> tuple[str, str]:
    """A short generated clip and dub (`lipgraph.tools.sample`)."""
    from lipgraph.tools.sample import make_sample as make
    return make(folder, seconds=1.6, width=320, height=240, extra_s=0.4)


def request_args(req: RunRequest) -> tuple[str, dict, dict]:
    """(graph, shortcuts, --set mapping) of a request, as `lipgraph.lipsync` takes them."""
    graph = GRAPHS.get(req.model, req.model)
    shortcuts = {"weights": None if req.random_weights else (req.weights or None),
                 "device": req.device or None, "dtype": req.dtype or None,
                 "fps": req.fps or None, "face": (req.face or "").strip() or None}
    sets = {"detect.detect_every": int(req.detect_every)} if req.detect_every else {}
    if graph == "surgical":
        shortcuts.update(steps=int(req.steps) if req.steps else None,
                         guidance=float(req.guidance) if req.guidance else None)
    return graph, {k: v for k, v in shortcuts.items() if v is not None}, sets


def start_run(queue: JobQueue, config: AppConfig, req: RunRequest, owner: str | None = None) -> Job:
    """Check the request now (files, size, graph, params: the command line's messages, as
    UsageError) and queue the run; its files go to the job's own folder."""
    video = check_upload(req.video, "video", config.max_upload_mb)
    audio = check_upload(req.audio, "audio", config.max_upload_mb)
    graph, shortcuts, sets = request_args(req)
    folder = queue.new_folder()
    output = os.path.join(folder, "out.mp4")
    from lipgraph.launch import check_files, load
    os.makedirs(folder)
    try:
        check_files(load(graph, sets, {"video": video, "audio": audio, "output": output, **shortcuts}))
    except UsageError:
        shutil.rmtree(folder, ignore_errors=True)
        raise

    def work(job: Job):
        from lipgraph.api import lipsync
        return lipsync(video, audio, output, graph=graph, set=sets,
                       random_weights=req.random_weights, cancel=job.cancel,
                       progress=lambda info: setattr(job, "progress", info), **shortcuts)
    return queue.submit("run", folder, work, owner)


def start_ab(queue: JobQueue, config: AppConfig, video: str | None, audio: str | None,
             weights: str | None = None, random_weights: bool = False, owner: str | None = None) -> Job:
    """Queue an A/B comparison of MuseTalk and LatentSync on one input (`tools.ab_compare`)."""
    video = check_upload(video, "video", config.max_upload_mb)
    audio = check_upload(audio, "audio", config.max_upload_mb)
    folder = queue.new_folder()
    os.makedirs(folder, exist_ok=True)

    def work(job: Job):
        from lipgraph.tools.ab_compare import compare
        sets_a, sets_b = [], []
        if random_weights:      # tiny random models, LatentSync cut short: a quick look only
            sets_a = random_sets("musetalk", video, audio)
            sets_b = random_sets("surgical", video, audio) + ["unet.steps=2", "batch.window=8"]
        report = compare(["musetalk", "surgical"], video, audio, folder,
                         weights=None if random_weights else (weights or None),
                         sets_a=sets_a, sets_b=sets_b, cancel=job.cancel)
        # what the A/B tab shows, read once here rather than on every poll
        md = os.path.join(folder, "report.md")
        with open(md, encoding="utf-8") as f:
            text = f.read()
        return {"video": report.get("side_by_side"), "report": text,
                "files": [md, os.path.join(folder, "report.json")]}
    return queue.submit("ab", folder, work, owner)


def random_sets(graph: str, video: str, audio: str) -> list[str]:
    """--set lines pointing a graph's model stages at the tiny random models."""
    from lipgraph.launch import load, random_model_sets
    return random_model_sets(load(graph, (), {"video": video, "audio": audio, "output": os.devnull + ".mp4"}))


# ---- what the page shows -----------------------------------------------------------------

def status_text(queue: JobQueue, job: Job | None) -> str:
    if job is None:
        return "No job yet."
    if job.state == "queued":
        return f"Queued: position {queue.position(job)} in line (one job runs at a time)."
    if job.state == "running":
        return "Running."
    if job.state == "done":
        return "Done."
    return f"{job.state.capitalize()}: {job.error}"


def progress_html(info) -> str:
    """A progress bar with frames done/total, rate and ETA, from the engine's own progress."""
    if info is None:
        return ('<div id="lipgraph-progress-text">waiting to start</div>'
                '<progress id="lipgraph-progress" value="0" max="1"></progress>')
    total = info.total or 0
    eta = f", ETA {info.eta_s:.0f} s" if info.eta_s is not None and not info.final else ""
    text = (f"{info.done}/{total or '?'} frames, {info.rate:.1f} frames/s{eta}, "
            f"{info.elapsed_s:.0f} s elapsed")
    return (f'<div id="lipgraph-progress-text">{html.escape(text)}</div>'
            f'<progress id="lipgraph-progress" value="{info.done}" max="{max(total, 1)}" '
            f'style="width:100%"></progress>')


STAGE_COLUMNS = ["stage", "type", "in", "out", "items/s", "busy s", "waiting s", "blocked s", "utilization"]


def stage_rows(stages: dict) -> list[list]:
    """The live per-stage table."""
    return [[name, s.get("type"), s.get("items_in"), s.get("items_out"), s.get("throughput_ips"),
             s.get("busy_s"), s.get("wait_input_s"), s.get("blocked_output_s"), s.get("utilization")]
            for name, s in stages.items()]


def time_chart_rows(profile: dict) -> list[dict]:
    """Per-stage busy / waiting / blocked seconds, the bottleneck marked in its name."""
    worst = (profile.get("bottleneck") or {}).get("stage")
    rows = []
    for name, s in profile.get("stages", {}).items():
        label = f"{name} (bottleneck)" if name == worst else name
        for state, key in (("busy", "busy_s"), ("waiting", "wait_input_s"), ("blocked", "blocked_output_s")):
            rows.append({"stage": label, "state": state, "seconds": float(s.get(key) or 0.0)})
    return rows


def result_summary(result) -> str:
    """Markdown: counts, fallbacks per reason, warnings; random weights bannered."""
    lines = []
    if result.random_weights:
        lines.append(f"> **{RANDOM_BANNER.strip('* ')}**\n")
    lines.append(f"**{result.frames}** frames, **{result.cutaways}** cutaways, "
                 f"**{sum(result.fallbacks.values())}** fallback frames")
    bottleneck = (result.profile.get("bottleneck") or {}).get("stage")
    if bottleneck:
        lines.append(f"\nBottleneck: `{bottleneck}`")
    for reason, n in sorted(result.fallbacks.items()):
        lines.append(f"- fallback: {reason}: {n}")
    for text in result.warnings:
        lines.append(f"- warning: {text.splitlines()[0]}")
    return "\n".join(lines)


def downloads(result) -> list[str]:
    return [p for p in (result.output, result.profile_path, result.trace_path) if p and os.path.isfile(p)]


def view(queue: JobQueue, job: Job | None) -> dict:
    """Everything the Run tab shows for a job, as plain values."""
    out = {"status": status_text(queue, job), "progress": progress_html(job and job.progress),
           "stages": [], "video": None, "files": [], "summary": "", "chart": [], "over": True}
    if job is None:
        return out
    info = job.progress
    out["over"] = job.over
    if info is not None:
        out["stages"] = stage_rows(info.stages)
    if job.state == "done" and job.kind == "run":
        out.update(video=job.result.output, files=downloads(job.result),
                   summary=result_summary(job.result), chart=time_chart_rows(job.result.profile))
    return out


def ab_view(queue: JobQueue, job: Job | None) -> dict:
    """What the A/B tab shows: the side-by-side video and the report."""
    out = {"status": status_text(queue, job), "video": None, "report": "", "files": []}
    if job is not None and job.state == "done":
        out.update(job.result)
    return out


def cancel(queue: JobQueue, job: Job | None) -> str:
    if job is not None and not job.over:
        queue.cancel(job)
    return status_text(queue, job)
