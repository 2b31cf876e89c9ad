"""The Python API (`lipgraph.lipsync`, `lipgraph.run_graph`): the command line's runs as calls,
from any thread, with the engine's progress, the CLI's messages and clean cancellation."""
import json
import os
import subprocess
import sys
import threading

import psutil
import pytest

import lipgraph
from lipgraph.graph import shm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"detect.detector": "haar"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from lipgraph.tools.sample import make_sample
    return make_sample(str(tmp_path_factory.mktemp("sample")), seconds=1.6, width=320, height=240, extra_s=0.4)


def in_thread(fn):
    """Call fn in a thread that is not the main one (as a web server's worker would)."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc
    t = threading.Thread(target=target)
    t.start()
    t.join(600)
    if "error" in box:
        raise box["error"]
    return box["value"]


def left_behind():
    """This process's shared memory and worker processes (multiprocessing's resource tracker
    lives as long as the interpreter and is not a worker)."""
    me = f"{shm.PREFIX}{os.getpid()}x"
    kids = [p for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())]
    return [n for n in shm.segments() if n.startswith(me)], kids, shm.semaphores(os.getpid())


def test_import_is_light():
    code = "import sys, lipgraph; lipgraph.lipsync; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_lipsync_with_random_weights(sample, tmp_path):
    video, audio = sample
    out = str(tmp_path / "out.mp4")
    calls = []
    result = in_thread(lambda: lipgraph.lipsync(video, audio, out, random_weights=True, set=FAST,
                                                progress=calls.append))
    assert result.output == out and os.path.getsize(out) > 0
    assert result.frames == 50 and result.cutaways == 0 and result.fallbacks == {}
    assert result.random_weights == "tiny" and any("NOT lip-synced" in n for n in result.notes)
    assert any(w.startswith("landmarks: ") for w in result.warnings)     # no FAN weights here
    # the profile is the profile JSON's content
    assert result.profile["status"] == "ok" and result.profile["random_weights"] == "tiny"
    assert json.load(open(result.profile_path))["items_done"] == 50
    assert os.path.isfile(result.trace_path)
    # the engine's progress: frames done never go back, the last call is the final count
    done = [c.done for c in calls]
    assert len(calls) >= 2 and done == sorted(done) and calls[-1].final and calls[-1].done == 50
    assert calls[-1].total == 50 and "unet" in calls[-1].stages
    assert all(not c.final for c in calls[:-1])
    assert left_behind() == ([], [], [])


def test_bad_input_raises_before_any_model_loads(sample, tmp_path, monkeypatch):
    from lipgraph import api
    from lipgraph.models import random_weights

    def no(*a, **k):
        raise AssertionError("a model was built or a run started")
    monkeypatch.setattr(random_weights, "ensure_random_weights", no)
    monkeypatch.setattr(api, "make_runner", no)     # the name run_graph calls
    _, audio = sample
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    with pytest.raises(lipgraph.UsageError) as err:
        lipgraph.lipsync(str(not_video), audio, str(tmp_path / "o.mp4"), random_weights=True)
    cli = subprocess.run([sys.executable, os.path.join(ROOT, "run_graph.py"), "musetalk", "--video",
                          str(not_video), "--audio", audio, "--output", str(tmp_path / "o.mp4")],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and f"lipgraph: {err.value}" in cli.stderr
    with pytest.raises(lipgraph.UsageError, match="input file not found|not found"):
        lipgraph.lipsync(str(tmp_path / "missing.mp4"), audio, str(tmp_path / "o.mp4"))
    with pytest.raises(lipgraph.UsageError, match="exclude each other"):
        lipgraph.lipsync(*sample, str(tmp_path / "o.mp4"), weights=str(tmp_path), random_weights=True)
    with pytest.raises(lipgraph.UsageError, match="detect_every"):
        lipgraph.lipsync(*sample, str(tmp_path / "o.mp4"), set={"detect.detect_every": "often"})
    assert not os.path.exists(tmp_path / "o.mp4")


def test_cancel_leaves_nothing(sample, tmp_path):
    video, audio = sample
    out = tmp_path / "out.mp4"
    stop = threading.Event()

    def progress(info):
        if info.done >= 1:           # mid-run: frames have reached the output
            stop.set()
    with pytest.raises(lipgraph.Cancelled) as err:
        in_thread(lambda: lipgraph.lipsync(video, audio, str(out), random_weights=True, set=FAST,
                                           progress=progress, cancel=stop))
    assert err.value.error.kind == "cancelled" and err.value.profile["status"] == "failed"
    assert not out.exists() and not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    assert left_behind() == ([], [], [])


def test_run_graph_takes_a_loaded_graph_as_it_is(sample):
    from lipgraph.graph.spec import load_graph
    spec = load_graph("musetalk", shortcuts={"video": sample[0], "audio": sample[1], "output": "o.mp4"})
    with pytest.raises(lipgraph.UsageError, match="runs as it is"):
        lipgraph.run_graph(spec, {"detect.detect_every": 2})


def test_a_script_without_a_main_guard_is_told_why(sample, tmp_path):
    """Worker processes import the user's script; a call there gets a clear message instead of
    multiprocessing's bootstrap error, and the run fails without leaving an output."""
    video, audio = sample
    out = tmp_path / "out.mp4"
    script = tmp_path / "dub.py"
    script.write_text("import lipgraph\n"
                      f"lipgraph.lipsync({video!r}, {audio!r}, {str(out)!r}, random_weights=True,\n"
                      f"                 set={FAST!r})\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=180, cwd=str(tmp_path))
    assert done.returncode != 0 and not out.exists()
    assert 'put the call under `if __name__ == "__main__":`' in done.stderr
