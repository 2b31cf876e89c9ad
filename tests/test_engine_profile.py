"""Profiling is always on: JSON profile, Chrome trace, table with the bottleneck, progress."""
import io
import json
import os
import subprocess
import sys
import time

import pytest

from lipgraph.graph.stats import DepthSeries, LatencyHistogram
from lipgraph.runners.report import Progress
from tests.engine_util import bypass_graph, run, write_graph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def slow_model_graph(tmp_path, out):
    doc = bypass_graph(out, 120, "runs:8:4", queue_size=2, workers=2, shape=(64, 64, 3))
    doc["stages"]["model"]["params"] = {"per_item_s": 0.01}   # the bottleneck by design
    return write_graph(tmp_path, doc)


def test_profile_json_trace_and_table(tmp_path):
    out = str(tmp_path / "out.jsonl")
    prof_path, trace_path = str(tmp_path / "p.json"), str(tmp_path / "t.json")
    proc = subprocess.run([sys.executable, "run_graph.py", slow_model_graph(tmp_path, out),
                           "--profile", prof_path, "--trace", trace_path],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    prof = json.load(open(prof_path))
    assert prof["status"] == "ok" and prof["items_done"] == 120
    st = prof["stages"]
    assert st["src"]["items_out"] == 120 and st["sink"]["items_in"] == 120
    assert st["model"]["items_in"] == 80 and st["model"]["batches"] == 20
    assert st["model"]["batch_sizes"] == {"4": 20} and st["model"]["mean_batch"] == 4.0
    assert st["model"]["busy_s"] >= 0.8 * 80 * 0.01
    for s in st.values():
        for key in ("busy_s", "wait_input_s", "blocked_output_s", "throughput_ips", "utilization"):
            assert key in s
    assert st["unb"]["workers"] == 2
    # the busy/wait split around the slow model: upstream blocks on its full queue,
    # downstream waits for input, and the sink's rate is the run's
    assert st["route"]["blocked_output_s"] > 0.2, st["route"]
    assert st["sink"]["wait_input_s"] > 0.2, st["sink"]
    assert st["model"]["wait_input_s"] < st["model"]["busy_s"]
    assert abs(st["sink"]["throughput_ips"] - 120 / prof["stream_wall_s"]) <= 0.05 * st["sink"]["throughput_ips"]
    assert prof["bottleneck"]["stage"] == "model"
    assert 0 < prof["latency_p50_s"] <= prof["latency_p95_s"]
    assert st["sink"]["latency_p50_s"] is not None
    groups = {p["group"] for p in prof["processes"]}
    assert groups == {"io", "gpu", "post", "runner"} and len(prof["processes"]) == 5
    assert all(p["peak_rss_bytes"] > 10e6 for p in prof["processes"])
    edge = prof["edges"]["route.main->model.in"]
    assert edge["queue_size"] == 2 and not edge["cross_process"] and edge["depth"]
    assert prof["edges"]["src.out->route.in"]["cross_process"]

    trace = json.load(open(trace_path))
    evs = trace["traceEvents"]
    spans = [e for e in evs if e["ph"] == "X"]
    counters = [e for e in evs if e["ph"] == "C"]
    names = {e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"src", "route", "model", "unb", "sink"} <= names
    assert sum(1 for e in spans if e["name"] == "model") == 20
    queues = [e for e in counters if e["name"].startswith("queue ")]
    assert queues and all("depth" in e["args"] for e in queues)
    assert any(e["name"] == "rss MiB" for e in counters)           # memory over time
    assert all(p["rss_over_time"] for p in prof["processes"] if p["group"] != "runner")
    assert len({e["pid"] for e in spans}) == 4          # group processes (the runner has no stage)

    assert "bottleneck: model" in proc.stderr
    assert "stage" in proc.stderr and "items/s" in proc.stderr and "util" in proc.stderr


def test_runners_agree_on_counts(tmp_path):
    out = str(tmp_path / "out.jsonl")
    path = slow_model_graph(tmp_path, out)
    a = run(path, "process").profile
    b = run(path, "inline").profile
    for name in ("src", "route", "model", "unb", "sink"):
        for key in ("items_in", "items_out", "batches"):
            assert a["stages"][name][key] == b["stages"][name][key], (name, key)
    assert b["runner"] == "inline" and len(b["processes"]) == 1


def test_failed_run_profile_records_error(tmp_path):
    out = str(tmp_path / "out.jsonl")
    prof_path = str(tmp_path / "p.json")
    res = run(slow_model_graph(tmp_path, out), "process", sets=["model.fail_at=3"], profile_path=prof_path)
    assert res.status == "failed"
    prof = json.load(open(prof_path))
    assert prof["status"] == "failed" and prof["error"]["stage"] == "model"


def test_progress_on_terminal_and_in_logs():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    t = Tty()
    p = Progress("job", t)
    p.update(0, 100, force=True)
    p.update(50, 100, force=True)
    assert "\r" in t.getvalue() and "50/100 (50%)" in t.getvalue() and "ETA" in t.getvalue()
    log = io.StringIO()
    p = Progress("job", log, plain_every_s=30)
    for i in range(1000):          # many updates in a short time: no flood in a log
        p.update(i, 1000)
    assert log.getvalue() == ""
    p.update(1000, 1000, force=True)                 # a due line is a plain line
    assert log.getvalue().count("\n") == 1 and "\r" not in log.getvalue()
    assert "1000/1000" in log.getvalue()


def test_latency_histogram_quantiles():
    h = LatencyHistogram()
    for i in range(1, 1001):
        h.add(i / 1000)
    assert abs(h.quantile(0.5) - 0.5) / 0.5 < 0.03
    assert abs(h.quantile(0.95) - 0.95) / 0.95 < 0.03
    d = h.to_dict()
    h2 = LatencyHistogram.from_dict(d)
    assert h2.quantile(0.5) == h.quantile(0.5)


def test_depth_series_stays_bounded():
    s = DepthSeries(cap=64)
    for i in range(100_000):
        s.add(i * 0.01, i % 7)
    assert len(s.points) < 64 and s.max == 6
    assert abs(s.to_dict()["mean"] - 3.0) < 0.01


@pytest.mark.parametrize("runner", ["process", "inline"])
def test_profile_is_rewritten_while_running(tmp_path, runner):
    """Another terminal can watch a long run: the profile JSON is replaced (atomically:
    always whole) every --profile-every seconds with the counts so far."""
    out = str(tmp_path / "out.jsonl")
    doc = bypass_graph(out, 60, "runs:8:4", queue_size=2)
    doc["stages"]["src"]["params"]["delay_s"] = 0.05                 # about 3 s
    prof_path = str(tmp_path / "p.json")
    proc = subprocess.Popen([sys.executable, "run_graph.py", write_graph(tmp_path, doc), "--quiet",
                             "--runner", runner, "--profile", prof_path, "--profile-every", "0.3"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    while proc.poll() is None:
        if os.path.exists(prof_path):
            with open(prof_path) as f:
                snap = json.load(f)                     # never a half-written file
            if snap["status"] == "running":
                seen.append(snap["stages"]["sink"]["items_in"])
        time.sleep(0.1)
    assert proc.returncode == 0, proc.stderr.read()
    final = json.load(open(prof_path))
    assert final["status"] == "ok" and final["stages"]["sink"]["items_in"] == 60
    assert len(set(seen)) >= 2 and seen == sorted(seen) and min(seen) < 60, seen
