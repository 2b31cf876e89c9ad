"""The Gradio page: components and their wiring to `handlers` (which hold the logic)."""
from __future__ import annotations

import os
import tempfile

import gradio as gr
import pandas as pd

from . import handlers as h
from .jobs import JobQueue


def build(config: h.AppConfig, queue: JobQueue | None = None) -> gr.Blocks:
    queue = queue or JobQueue(config.jobs_dir, config.keep_s)

    def sample():
        return h.make_sample(tempfile.mkdtemp(prefix="sample-", dir=config.jobs_dir))

    def run(video, audio, model, weights, random_weights, device, dtype, detect_every, steps,
            guidance, fps, face, request: gr.Request):
        req = h.RunRequest(video, audio, model, weights, random_weights, device or None,
                           dtype or None, detect_every, steps, guidance, fps, face)
        try:
            job = h.start_run(queue, config, req, owner=request.session_hash)
        except h.UsageError as exc:
            raise gr.Error(f"lipgraph: {exc}", print_exception=False)
        return h.status_text(queue, job)

    def poll(request: gr.Request):
        v = h.view(queue, queue.latest(request.session_hash, "run"))
        chart = pd.DataFrame(v["chart"] or [], columns=["stage", "state", "seconds"])
        return (v["status"], v["progress"], pd.DataFrame(v["stages"], columns=h.STAGE_COLUMNS),
                v["video"], v["files"] or None, v["summary"], chart)

    def cancel(request: gr.Request):
        return h.cancel(queue, queue.latest(request.session_hash, "run"))

    def ab_cancel(request: gr.Request):
        return h.cancel(queue, queue.latest(request.session_hash, "ab"))

    def ab_run(video, audio, weights, random_weights, request: gr.Request):
        try:
            job = h.start_ab(queue, config, video, audio, weights, random_weights,
                             owner=request.session_hash)
        except h.UsageError as exc:
            raise gr.Error(f"lipgraph: {exc}", print_exception=False)
        return h.status_text(queue, job)

    def ab_poll(request: gr.Request):
        v = h.ab_view(queue, queue.latest(request.session_hash, "ab"))
        return v["status"], v["video"], v["report"], v["files"] or None

    with gr.Blocks(title="lipgraph") as page:
        gr.Markdown("# lipgraph\nLip-sync a video to a new audio track (MuseTalk or LatentSync).")
        with gr.Row():
            video = gr.Video(label="Video", elem_id="video-in", sources=["upload"])
            audio = gr.Audio(label="Dub (audio)", type="filepath", elem_id="audio-in", sources=["upload"])
        make = gr.Button("Use the generated sample", elem_id="sample")
        make.click(sample, outputs=[video, audio])
        with gr.Tab("Run"):
            with gr.Row():
                model = gr.Radio(list(h.GRAPHS), value="MuseTalk", label="Model", elem_id="model")
                weights = gr.Textbox(value=config.weights or "", label="Weights folder", elem_id="weights")
                random_weights = gr.Checkbox(label="Random weights (NOT lip-synced: a test of the pipeline)",
                                             value=not config.weights, elem_id="random-weights")
            with gr.Accordion("Options", open=False):
                with gr.Row():
                    device = gr.Textbox(label="Device (cpu, cuda:0; empty: auto)")
                    dtype = gr.Dropdown(["", "fp32", "fp16", "bf16"], value="", label="dtype")
                    detect_every = gr.Number(value=None, precision=0, label="detect_every")
                    fps = gr.Number(value=None, label="Output fps (empty: the video's)")
                with gr.Row():
                    steps = gr.Number(value=None, precision=0, label="LatentSync steps")
                    guidance = gr.Number(value=None, label="LatentSync guidance")
                    face = gr.Dropdown(list(h.FACES), value="largest", allow_custom_value=True,
                                       label="Face (largest, speaker, track ids 1,3, point 0.25,0.5)")
            with gr.Row():
                go = gr.Button("Run", variant="primary", elem_id="run")
                stop = gr.Button("Cancel", elem_id="cancel")
            status = gr.Markdown("No job yet.", elem_id="status")
            bar = gr.HTML(h.progress_html(None), elem_id="progress")
            table = gr.Dataframe(headers=h.STAGE_COLUMNS, label="Stages (live)", elem_id="stages")
            with gr.Row():
                out_video = gr.Video(label="Result", elem_id="result-video", interactive=False)
                files = gr.File(label="Downloads: video, profile JSON, trace (ui.perfetto.dev)",
                                file_count="multiple", elem_id="downloads", interactive=False)
            summary = gr.Markdown(elem_id="summary")
            chart = gr.BarPlot(x="stage", y="seconds", color="state", label="Per-stage time (s)",
                               elem_id="chart")
            go.click(run, [video, audio, model, weights, random_weights, device, dtype, detect_every,
                           steps, guidance, fps, face], status)
            stop.click(cancel, None, status)
            gr.Timer(0.5).tick(poll, None, [status, bar, table, out_video, files, summary, chart])
        with gr.Tab("A/B"):
            gr.Markdown("MuseTalk and LatentSync on the same input: input | A | B side by side, "
                        "and the comparison report.")
            with gr.Row():
                ab_go = gr.Button("Compare", variant="primary", elem_id="ab-run")
                ab_stop = gr.Button("Cancel", elem_id="ab-cancel")
            ab_status = gr.Markdown("No comparison yet.")
            ab_video = gr.Video(label="Side by side", interactive=False)
            ab_report = gr.Markdown()
            ab_files = gr.File(label="Report", file_count="multiple", interactive=False)
            ab_go.click(ab_run, [video, audio, weights, random_weights], ab_status)
            ab_stop.click(ab_cancel, None, ab_status)
            gr.Timer(1.0).tick(ab_poll, None, [ab_status, ab_video, ab_report, ab_files])
    page.allowed = [os.path.abspath(config.jobs_dir)]
    return page
