"""The web app's handlers and job queue, without a browser (the page: test_app_browser.py)."""
import os
import threading
import time

import pytest

from lipgraph.api import summarize
from lipgraph.app import handlers as h
from lipgraph.app.jobs import JobQueue
from lipgraph.runners.report import ProgressInfo

PROFILE = {"items_done": 10, "bottleneck": {"stage": "unet"},
           "stages": {"detect": {"type": "face_detect", "counters": {"faces": 7, "cutaways": 3},
                                 "busy_s": 1.0, "wait_input_s": 0.5, "blocked_output_s": 0.1},
                      "unet": {"type": "surgical_unet", "busy_s": 4.0,
                               "counters": {"fallback_frames": 4},
                               "reasons": {"fallback_frames": {"no face track": 4}}}}}


def wait(job, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not job.over and time.monotonic() < deadline:
        time.sleep(0.02)
    return job


def test_uploads_get_the_command_lines_messages(tmp_path):
    config = h.AppConfig(str(tmp_path / "jobs"), max_upload_mb=0.001)
    queue = JobQueue(config.jobs_dir)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"x" * 4096)
    with pytest.raises(h.UsageError, match="over this app's limit of 0.001 MB"):
        h.start_run(queue, config, h.RunRequest(str(big), str(big)))
    config.max_upload_mb = 10
    with pytest.raises(h.UsageError, match="no audio file given"):
        h.start_run(queue, config, h.RunRequest(str(big), None))
    text = tmp_path / "audio.wav"
    text.write_text("not audio")
    with pytest.raises(h.UsageError) as err:        # what `lipgraph musetalk` says of them
        h.start_run(queue, config, h.RunRequest(str(big), str(text)))
    assert "stage 'video'" in str(err.value) and "stage 'audio'" in str(err.value)
    assert queue.jobs == {}


def test_request_becomes_shortcuts_and_sets():
    req = h.RunRequest("v.mp4", "a.wav", "LatentSync", weights="/w", device="cpu", detect_every=3,
                       steps=4, guidance=1.5, fps=25, face=" 1,3 ")
    graph, shortcuts, sets = h.request_args(req)
    assert graph == "surgical" and sets == {"detect.detect_every": 3}
    assert shortcuts == {"weights": "/w", "device": "cpu", "fps": 25, "face": "1,3", "steps": 4,
                         "guidance": 1.5}
    req.random_weights, req.model = True, "MuseTalk"
    graph, shortcuts, _ = h.request_args(req)
    assert graph == "musetalk" and "weights" not in shortcuts and "steps" not in shortcuts


def test_jobs_run_one_at_a_time_in_order(tmp_path):
    queue = JobQueue(str(tmp_path))
    gate, running, order = threading.Event(), [], []

    def work(name):
        def run(job):
            running.append(name)
            assert len(running) == 1            # never two at once
            gate.wait(10)
            order.append(name)
            running.remove(name)
            return name
        return run
    jobs = [queue.submit("run", queue.new_folder(), work(n)) for n in "abc"]
    time.sleep(0.2)
    assert [queue.position(j) for j in jobs] == [0, 1, 2]
    assert "position 2 in line" in h.status_text(queue, jobs[2])
    h.cancel(queue, jobs[1])                      # leaves the line, never runs
    assert jobs[1].state == "cancelled" and queue.position(jobs[2]) == 1
    gate.set()
    assert wait(jobs[2]).state == "done" and order == ["a", "c"] and jobs[0].result == "a"


def test_failed_job_and_folders_removed_after_keep(tmp_path):
    queue = JobQueue(str(tmp_path), keep_s=60)
    folder = queue.new_folder()
    os.makedirs(folder)

    def boom(job):
        raise h.UsageError("input file not found: x.mp4")
    job = wait(queue.submit("run", folder, boom))
    assert job.state == "failed" and "Failed: input file not found" in h.status_text(queue, job)
    assert queue.sweep() == [] and os.path.isdir(folder)
    assert queue.sweep(now=job.ended_at + 61) == [job.id] and not os.path.exists(folder)


def test_each_visitor_sees_its_own_job_until_the_worker_sweeps_it(tmp_path):
    queue = JobQueue(str(tmp_path), keep_s=60)
    folders = [queue.new_folder() for _ in range(3)]
    for f in folders:
        os.makedirs(f)
    mine = wait(queue.submit("run", folders[0], lambda job: "a", owner="visitor-1"))
    newer = wait(queue.submit("run", folders[1], lambda job: "b", owner="visitor-1"))
    ab = wait(queue.submit("ab", folders[2], lambda job: "c", owner="visitor-1"))
    assert mine.state == newer.state == ab.state == "done"
    assert queue.latest("visitor-1", "run") is newer and queue.latest("visitor-1", "ab") is ab
    assert queue.latest("visitor-2", "run") is None
    with queue.lock:                           # nobody polls: the worker sweeps by itself
        queue.keep_s = 0.2
        queue.lock.notify_all()
    deadline = time.monotonic() + 10
    while (queue.jobs or any(os.path.exists(f) for f in folders)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue.jobs == {} and queue.latest("visitor-1", "ab") is None
    assert not any(os.path.exists(f) for f in folders)


def test_an_idle_queue_with_keep_zero_does_not_spin(tmp_path):
    queue = JobQueue(str(tmp_path), keep_s=0)
    time.sleep(0.2)
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(1.0)
    used = time.process_time() - cpu
    assert used < 0.5 * (time.monotonic() - wall), f"idle worker used {used:.2f} s of CPU"
    assert queue.jobs == {}


def test_view_of_a_running_and_a_finished_job(tmp_path):
    queue = JobQueue(str(tmp_path))
    out = tmp_path / "out.mp4"
    out.write_bytes(b"video")
    result = summarize(dict(PROFILE, profile_path=str(tmp_path / "p.json")), str(out),
                       ["landmarks: no FAN weights"], [], "tiny")
    assert (result.frames, result.cutaways, result.fallbacks) == (10, 3, {"no face track": 4})
    step = threading.Event()

    def work(job):
        job.progress = ProgressInfo(4, 10, 2.0, 3.0, 2.0, PROFILE["stages"])
        step.wait(10)
        return result
    job = queue.submit("run", queue.new_folder(), work)
    time.sleep(0.2)
    v = h.view(queue, job)
    assert not v["over"] and 'value="4" max="10"' in v["progress"] and "4/10 frames" in v["progress"]
    assert "ETA 3 s" in v["progress"] and [r[0] for r in v["stages"]] == ["detect", "unet"]
    step.set()
    v = h.view(queue, wait(job))
    assert v["over"] and v["video"] == str(out) and v["files"] == [str(out)]    # no profile file
    assert "NOT lip-synced" in v["summary"] and "no face track: 4" in v["summary"]
    assert "warning: landmarks" in v["summary"] and "Bottleneck: `unet`" in v["summary"]
    chart = {(r["stage"], r["state"]): r["seconds"] for r in v["chart"]}
    assert chart[("unet (bottleneck)", "busy")] == 4.0 and chart[("detect", "waiting")] == 0.5


def test_page_builds(tmp_path):
    pytest.importorskip("gradio")
    from lipgraph.app.layout import build
    page = build(h.AppConfig(str(tmp_path)))
    assert page.allowed == [str(tmp_path)]


def test_app_command_help():
    from lipgraph.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["app", "--help"])
    assert exit_.value.code == 0


@pytest.mark.slow       # both graphs and the comparison: about a minute
def test_ab_tab_compares_both_graphs(tmp_path):
    from lipgraph.tools.synthetic import clip_pattern, make_clip
    video, audio = make_clip(str(tmp_path), clip_pattern(24, face_run=10, cutaway_run=4))
    config = h.AppConfig(str(tmp_path / "jobs"))
    queue = JobQueue(config.jobs_dir)
    job = wait(h.start_ab(queue, config, video, audio, random_weights=True), timeout=600)
    assert job.state == "done", job.error
    shown = h.ab_view(queue, job)
    assert shown["video"] and os.path.isfile(shown["video"])
    assert "musetalk" in shown["report"] and "surgical" in shown["report"]
    assert {os.path.basename(p) for p in shown["files"]} == {"report.md", "report.json"}
