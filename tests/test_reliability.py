"""Nothing left behind under any fault: named semaphores after a SIGKILL of the whole run,
temporary files of the final join under signals and kills, and hung stages (the stall
watchdog)."""
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from lipgraph.graph import shm
from lipgraph.graph.stage import Stage
from lipgraph.media.partial import partial_path, stale_partials, sweep_partials
from lipgraph.media.segments import JOIN_PAUSE_ENV
from tests.engine_util import assert_clean, bypass_graph, run, wait_for_children, write_graph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(path, *args, env=None, **kw):
    return subprocess.Popen([sys.executable, "run_graph.py", path, "--quiet", "--no-trace", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **kw)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----- 1. named semaphores ------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX semaphores in /dev/shm")
def test_sigkill_of_whole_run_leaves_semaphores_that_the_next_run_sweeps(tmp_path):
    out = str(tmp_path / "out.jsonl")
    doc = bypass_graph(out, 800, "runs:6:3", queue_size=2, workers=2)
    doc["stages"]["src"]["params"]["delay_s"] = 0.05
    proc = start(write_graph(tmp_path, doc), "--profile", str(tmp_path / "p.json"),
                 start_new_session=True)
    kids = wait_for_children(proc, 4)
    time.sleep(1.0)                                     # frames are moving
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)                 # runner, resource tracker, groups
    proc.communicate()
    psutil.wait_procs(kids, timeout=5)
    # what multiprocessing cannot clean up after such a kill: named after the runner's pid
    left = shm.semaphores(proc.pid)
    assert len(left) >= 10, left

    # an entry of a live process (this one) must survive the sweep; made by hand, since
    # whether multiprocessing keeps the name in /dev/shm depends on this process's history
    mine = [f"sem.{shm.SEM_PREFIX}{os.getpid()}-sweeptest"]
    open(os.path.join("/dev/shm", mine[0]), "wb").close()
    assert shm.semaphores(os.getpid()) == mine
    try:
        short = write_graph(tmp_path, bypass_graph(str(tmp_path / "o2.jsonl"), 10, "alternate"), "s.yaml")
        nxt = start(short, "--profile", str(tmp_path / "p2.json"))
        _, err = nxt.communicate(timeout=60)
        assert nxt.returncode == 0, err
        assert shm.semaphores(proc.pid) == []          # the next run's start swept them
        assert shm.semaphores(nxt.pid) == []           # and its own are gone with it
        assert shm.semaphores(os.getpid()) == mine
        assert not glob.glob(os.path.join(tempfile.gettempdir(), f"lipgraph-run-{proc.pid}x*"))
    finally:
        os.unlink(os.path.join("/dev/shm", mine[0]))


def test_named_semaphores_restores_the_prefix():
    from multiprocessing import process
    before = process.current_process()._config["semprefix"]
    with pytest.raises(RuntimeError):
        with shm.named_semaphores():
            assert process.current_process()._config["semprefix"] == f"/mp-lipgraph-{os.getpid()}"
            raise RuntimeError("boom")
    assert process.current_process()._config["semprefix"] == before


# ----- 2. temporary files of the join -------------------------------------------------------
def test_stale_partials_of_dead_processes_are_swept(tmp_path):
    target = str(tmp_path / "out.mp4")
    mine = partial_path(target)
    assert os.path.basename(mine).startswith(f".out.mp4.{os.getpid()}x") and mine.endswith(".partial")
    gone = str(tmp_path / f".out.mp4.{dead_pid()}xdeadbeef.partial")
    other = str(tmp_path / f".other.mp4.{dead_pid()}xdeadbeef.partial")
    legacy = str(tmp_path / ".out.mp4.deadbeef.partial")           # no pid: not ours to judge
    for p in (mine, gone, other, legacy):
        open(p, "w").close()
    assert stale_partials(target) == [gone]
    assert sweep_partials(target, None) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in (mine, other, legacy))


JOIN_GRAPH = """
name: join
queue_size: 4
args:
  video: video.path
  audio: [video.audio, mux.audio]
  output: mux.path
stages:
  video: {type: video_source, group: src, params: {length: video}}
  route: {type: synthetic_router, group: src, params: {batch_size: 4, bypass: "runs:6:3"}}
  unb:   {type: synthetic_unbatch, group: src}
  mux:   {type: mux, group: out, params: {codec: ffv1, pix_fmt: bgr0, segment_s: 0.4}}
edges:
  - video.out -> route.in
  - route.main -> unb.in
  - unb.out -> mux.main
  - route.bypass -> mux.bypass
"""


@pytest.fixture(scope="module")
def join_job(tmp_path_factory):
    """A graph without models whose mux writes 5 segments and joins them, and its inputs."""
    from lipgraph.tools.synthetic import make_clip
    folder = tmp_path_factory.mktemp("join")
    video, audio = make_clip(str(folder), "C" * 50, width=64, height=48)
    graph = str(folder / "join.yaml")
    with open(graph, "w") as f:
        f.write(JOIN_GRAPH)
    return graph, video, audio


def leftovers(folder, out, pid) -> list[str]:
    """Temporary files of `out` beside it or in the temp folder, and the run's scratch folder."""
    name = os.path.basename(out)
    here = [n for n in os.listdir(folder) if n.startswith(f".{name}") and n.endswith(".partial")]
    tmp = [n for n in os.listdir(tempfile.gettempdir())
           if (".partial" in n and name in n) or n.startswith(f"lipgraph-run-{pid}x")]
    return here + tmp


@pytest.mark.parametrize("fault", ["sigterm", "kill_joiner", "killpg"])
def test_fault_during_join_leaves_no_temporary_file_and_resume_completes(join_job, tmp_path, fault):
    graph, video, audio = join_job
    out = str(tmp_path / "out.mkv")
    args = ["--video", video, "--audio", audio, "--output", out]
    # the test hook holds the join after its first segment, temporary file open
    env = dict(os.environ, **{JOIN_PAUSE_ENV: "60"})
    proc = start(graph, *args, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while not glob.glob(str(tmp_path / ".out.mkv.*.partial")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    temp, = glob.glob(str(tmp_path / ".out.mkv.*.partial"))

    def writer_of(path):
        for k in psutil.Process(proc.pid).children(recursive=True):
            try:           # children may end (zombies) while they are looked at
                if any(f.path == path for f in k.open_files()):
                    return k
            except psutil.Error:
                continue
        return None
    joiner = writer_of(temp)
    while joiner is None and time.monotonic() < deadline:     # the file can show before its handle
        time.sleep(0.05)
        joiner = writer_of(temp)
    assert joiner is not None, "no process holds the join's temporary file"
    # the temporary name carries the pid of the process writing it
    assert os.path.basename(temp).startswith(f".out.mkv.{joiner.pid}x")
    t0 = time.monotonic()
    if fault == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif fault == "kill_joiner":
        joiner.kill()
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5.0
    assert not os.path.exists(out)
    if fault == "sigterm":
        assert proc.returncode == 143 and "interrupted by SIGTERM" in err, err
    elif fault == "kill_joiner":
        assert proc.returncode == 1 and "group 'out' (stages: mux) was killed by signal SIGKILL" in err, err
    if fault == "killpg":
        # nobody was left to clean up: the temporary file stays until the next run for
        # this output, which removes it because its writer is gone
        psutil.wait_procs([joiner], timeout=5)
        assert os.path.exists(temp)
    else:
        assert leftovers(str(tmp_path), out, proc.pid) == [], err
    # completed segments stay for --resume, in the job's own folder only
    assert os.path.exists(str(tmp_path / ".out.mkv.lipgraph" / "manifest.json"))

    done = subprocess.run([sys.executable, "run_graph.py", graph, "--quiet", "--no-trace", *args,
                           "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "(5 segment(s) done)" in done.stderr
    assert leftovers(str(tmp_path), out, proc.pid) == []     # swept, after a killpg too
    assert shm.semaphores(proc.pid) == []
    assert not [n for n in shm.segments() if n.startswith(f"{shm.PREFIX}{proc.pid}x")]
    assert not os.path.exists(str(tmp_path / ".out.mkv.lipgraph"))
    from lipgraph.media.video import VideoReader
    assert len(list(VideoReader(out))) == 50


# ----- 3. the stall watchdog -----------------------------------------------------------------
STALL_S = 2.0


def hang_graph(tmp_path, out, count=400):
    doc = bypass_graph(out, count, "runs:6:3", queue_size=2)
    doc["stages"]["unb"]["type"] = "synthetic_map"
    doc["stages"]["unb"]["params"] = {"hang_at": 13}
    return write_graph(tmp_path, doc)


def check_stall_message(message: str) -> None:
    assert message.startswith(f"stalled: nothing moved for {STALL_S:g} s"), message
    assert ("stage 'unb' (synthetic_map, group post) is stuck at items 13..14 (one batch), "
            "in process()") in message, message
    # the stack of the stuck thread, from the stage's own code inwards
    assert "stages/synthetic.py" in message and "in hang_forever" in message, message
    assert "time.sleep(0.1)" in message


def test_stall_stops_process_run_and_names_the_stage(tmp_path):
    out = str(tmp_path / "out.jsonl")
    proc = start(hang_graph(tmp_path, out), "--stall-timeout", str(STALL_S),
                 "--profile", str(tmp_path / "p.json"))
    kids = wait_for_children(proc, 3)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, err
    check_stall_message(err.split("lipgraph: ", 1)[1])
    assert "other stages:" in err and "blocked on output" in err
    # item 13 reaches the stage well within a second of the start
    assert elapsed < STALL_S + 5.0, elapsed
    assert_clean(kids, proc.pid, out)


def test_stall_stops_inline_run(tmp_path):
    out = str(tmp_path / "out.jsonl")
    t0 = time.monotonic()
    result = run(hang_graph(tmp_path, out), runner="inline", stall_timeout_s=STALL_S)
    assert time.monotonic() - t0 < STALL_S + 3.0
    assert result.exit_code == 1 and result.error["kind"] == "stalled"
    assert result.error["stage"] == "unb" and result.error["index"] == 13
    check_stall_message(result.error["message"])
    assert not os.path.exists(out) and not [n for n in os.listdir(tmp_path) if ".partial" in n]


def test_stopped_process_is_a_stall_too(tmp_path):
    """A process that cannot answer (SIGSTOP here) is named with what it had in hand, and
    killed (SIGTERM would stay pending)."""
    out = str(tmp_path / "out.jsonl")
    doc = bypass_graph(out, 2000, "runs:6:3", queue_size=2)
    doc["stages"]["src"]["params"]["delay_s"] = 0.01
    proc = start(write_graph(tmp_path, doc), "--stall-timeout", str(STALL_S),
                 "--profile", str(tmp_path / "p.json"))
    kids = wait_for_children(proc, 3)
    time.sleep(1.0)
    # groups start in the order the graph names them: io, gpu, post
    victim = sorted(kids, key=lambda k: (k.create_time(), k.pid))[2]
    victim.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        for k in kids:
            try:
                k.send_signal(signal.SIGCONT)
            except psutil.Error:
                pass
    assert proc.returncode == 1, err
    assert time.monotonic() - t0 < STALL_S + 6.0
    assert "stalled: nothing moved" in err
    assert "process of group 'post' (stages: unb) is stopped (SIGSTOP or a debugger)" in err, err
    assert_clean(kids, proc.pid, out)


def test_slow_items_are_not_stalls(tmp_path):
    """Items that each take a while, but less than the timeout, never trip it."""
    out = str(tmp_path / "out.jsonl")
    doc = bypass_graph(out, 12, "none", queue_size=1)
    doc["stages"]["model"]["params"] = {"per_item_s": 0.1}        # 0.4 s a batch of 4
    result = run(write_graph(tmp_path, doc), runner="inline", stall_timeout_s=0.6)
    assert result.ok, result.error


class Heartbeating(Stage):
    """One long step at item 3 (longer than the stall timeout) that says it is alive, as the
    mux does while joining segments."""

    params = {"step_s": 3.0, "beat": True}

    def process(self, item, port):
        if item.index <= 3 <= item.last_index:
            end = time.monotonic() + self.p["step_s"]
            while time.monotonic() < end:
                if self.p["beat"]:
                    self.ctx.heartbeat()
                time.sleep(0.1)
        yield "out", item


def test_heartbeats_keep_a_long_step_alive(tmp_path):
    out = str(tmp_path / "out.jsonl")
    doc = bypass_graph(out, 8, "none", queue_size=1)
    doc["stages"]["unb"]["type"] = "tests.test_reliability:Heartbeating"
    path = write_graph(tmp_path, doc)
    proc = start(path, "--stall-timeout", str(STALL_S), "--profile", str(tmp_path / "p.json"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = run(path, runner="inline", stall_timeout_s=STALL_S)
    assert result.ok, result.error
    # the same step without heartbeats is a stall
    result = run(path, runner="inline", sets=["unb.beat=false"], stall_timeout_s=STALL_S)
    assert result.error["kind"] == "stalled" and result.error["stage"] == "unb", result.error


@pytest.mark.slow
def test_stall_stops_ray_run(tmp_path):
    pytest.importorskip("ray")
    out = str(tmp_path / "out.jsonl")
    proc = start(hang_graph(tmp_path, out), "--stall-timeout", str(STALL_S), "--runner", "ray",
                 "--profile", str(tmp_path / "p.json"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    check_stall_message(err.split("lipgraph: ", 1)[1])
    assert not os.path.exists(out) and not [n for n in os.listdir(tmp_path) if ".partial" in n]


@pytest.mark.parametrize("runner", ["process", "inline"])
def test_a_profile_that_cannot_be_written_costs_the_report_not_the_run(tmp_path, runner):
    import io

    from tests.engine_util import bypass_graph, run, rows, write_graph
    out = str(tmp_path / "out.jsonl")
    path = write_graph(tmp_path, bypass_graph(out, 12, "none"))
    stream = io.StringIO()
    blocker = tmp_path / "not-a-folder"          # a file where the reports' folder should be
    blocker.write_text("")
    res = run(path, runner, profile_path=str(blocker / "p.json"),
              trace_path=str(blocker / "t.json"), profile_every_s=0.01, stream=stream)
    assert res.ok, res.error
    assert len(rows(out)) == 12
    text = stream.getvalue()
    assert text.count("could not write the profile") == 1 and "could not write the trace" in text
