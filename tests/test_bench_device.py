"""bench/device.py, the one-command device benchmark, in its reduced mode on the CPU: every
section yields figures (fp16 and bf16 included), the report is written, and a section that
fails is recorded without stopping the run."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "device.py")


def run(out, *args, timeout=240):
    return subprocess.run([sys.executable, BENCH, str(out), "--device", "cpu", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def positive(v):
    return isinstance(v, (int, float)) and v > 0


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("device")
    proc = run(out, "--reduced")
    report = json.loads((out / "device.json").read_text()) if (out / "device.json").exists() else None
    return proc, out, report


def test_reduced_run_writes_every_section(reduced):
    proc, out, rep = reduced
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rep["reduced"] is True and rep["device"] == "cpu"
    assert set(rep["sections"]) == {"sanity", "e2e", "latentsync", "cpu_side"}
    for name, s in rep["sections"].items():
        assert s["status"] == "ok", (name, s.get("error"))
        assert positive(s["seconds"]) or name == "cpu_side"
    env = rep["environment"]
    assert env["torch"] and positive(env["cpu_count"]) and env["cuda_available"] is False
    md = (out / "device.md").read_text()
    for head in ("## Environment", "## 1. CUDA sanity", "## 2. MuseTalk end to end",
                 "## 3. LatentSync window", "## 4. CPU side alone"):
        assert head in md


def test_reduced_sanity_compares_fp16_and_bf16(reduced):
    s = reduced[2]["sections"]["sanity"]
    for dtype in ("float32", "float16", "bfloat16"):
        assert s["runs"][dtype]["status"] == "ok" and positive(s["runs"][dtype]["fps"])
    for dtype in ("float16", "bfloat16"):
        p = s["psnr_db"][dtype]
        assert positive(p["min"]) and positive(p["mean"]) and p["min"] <= p["mean"]
        assert p["face_frames"] == s["clip"]["face_frames"]
        assert p["outside_faces_identical"] is True         # a dtype changes the faces only


def test_reduced_end_to_end_and_cpu_side(reduced):
    secs = reduced[2]["sections"]
    e = secs["e2e"]
    assert positive(e["fps_end_to_end"]) and positive(e["fps_model_stages"])
    assert positive(e["fps_with_startup"]) and e["frames_out"] == e["clip"]["frames"]
    assert {"video", "encode", "unet", "decode", "blend", "mux"} <= set(e["stages"])
    assert "bottleneck" in e["table"]
    assert set(e["peak_cuda_mib_by_group"].values()) == {"n/a"}        # CPU run
    c = secs["cpu_side"]               # bench/cpu_side.py: the model stages stood in
    assert "measured" in c["method"] and positive(c["core_ms_per_frame"])
    assert not {"encode", "unet", "decode", "whisper"} & set(c["stage_core_ms"])
    assert {"video", "crop", "blend", "mux"} <= set(c["stage_core_ms"])


def test_reduced_latentsync_windows(reduced):
    s = reduced[2]["sections"]["latentsync"]
    assert len(s["by_resolution"]) == 2
    for entry in s["by_resolution"].values():
        assert entry["status"] == "ok"
        configs = {(w["guidance"], w["deepcache"]) for w in entry["windows"]}
        assert configs == {(1.5, 0), (1.5, 3), (1.0, 0), (1.0, 3)}
        assert all(positive(w["window_s"]) for w in entry["windows"])
        assert positive(entry["deepcache"]["1.5"]["speedup"])
        assert entry["peak_cuda_mib"] == "n/a"


def test_a_failing_section_is_recorded_and_the_rest_still_run(tmp_path):
    # asked for CUDA on a machine without it: the LatentSync window fails, the JSON says why,
    # and the CPU side (which needs no GPU) is still measured
    proc = run(tmp_path, "--reduced", "--device", "cuda", "--sections", "latentsync,cpu_side",
               timeout=180)
    assert proc.returncode == 1
    rep = json.loads((tmp_path / "device.json").read_text())
    assert rep["sections"]["latentsync"]["status"] == "failed"
    assert "cuda" in rep["sections"]["latentsync"]["error"].lower()
    assert rep["sections"]["cpu_side"]["status"] == "ok"
    assert "## Errors" in (tmp_path / "device.md").read_text()
