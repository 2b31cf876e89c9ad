"""bench/device.py's environment facts and its readable report, device.md."""
from __future__ import annotations

import os
import platform
import subprocess

from _common import ROOT

SECTIONS = ("sanity", "e2e", "latentsync", "cpu_side")
DTYPES = ("float32", "float16", "bfloat16")


def mib(n) -> float | None:
    return None if n is None else round(n / 2**20, 1)


# ----- environment ------------------------------------------------------------------------
def _output(cmd: list[str], timeout: float) -> str | None:
    """A command's stdout, stripped; None when it cannot run or fails."""
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "hostname": platform.node()}
    if hasattr(os, "sched_getaffinity"):
        env["cpus_usable"] = len(os.sched_getaffinity(0))
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
    smi = _output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                   "--format=csv,noheader"], 20)
    if smi is not None:
        env["nvidia_smi"] = smi
    rev = _output(["git", "rev-parse", "--short", "HEAD"], 10)
    if rev is not None:
        env["git"] = rev + ("+dirty" if _output(["git", "status", "--porcelain"], 10) else "")
    return env


# ----- the readable report ----------------------------------------------------------------
def _f(v, spec="{:.2f}") -> str:
    return "-" if v is None else (v if isinstance(v, str) else spec.format(v))


def _first_line(error: str | None, width: int) -> str:
    return (error or "").splitlines()[0][:width] if error else ""


def markdown(rep: dict) -> str:
    env, secs = rep["environment"], rep["sections"]
    lines = [f"# Device benchmark ({'reduced' if rep['reduced'] else 'full'})", "",
             f"{rep['started_at']}, device `{rep['device']}`, {rep['models']} random models "
             "(not lip-synced: timings and numerics only), "
             f"{_f(rep.get('total_s') or rep.get('elapsed_s'), '{:.1f}')} s in all.", "",
             "## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    if rep.get("prepare"):
        lines += ["", "Preparation: " + ", ".join(f"{k} {v} s" for k, v in rep["prepare"].items())]
    lines += ["", "## Sections", "", "| section | status | seconds | error |", "|---|---|---|---|"]
    for name in (n for n in SECTIONS if n in secs):
        s = secs[name]
        lines.append(f"| {name} | {s['status']} | {_f(s.get('seconds'), '{:.1f}')} | "
                     f"{_first_line(s.get('error'), 120)} |")

    s = secs.get("sanity")
    if s:
        lines += ["", "## 1. CUDA sanity: float16 and bfloat16 against float32", ""]
        if s.get("clip"):
            c = s["clip"]
            lines += [f"Clip {c['size']}, {c['frames']} frames ({c['face_frames']} with a face); "
                      "PSNR over the face box of each face frame.", ""]
        lines += ["| dtype | run | wall s | fps | PSNR min dB | PSNR mean dB | identical faces "
                  "| outside faces identical |", "|---|---|---|---|---|---|---|---|"]
        for dt, r in (s.get("runs") or {}).items():
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
                lines.append(f"| {r} | failed: {_first_line(e.get('error'), 100)} | | | | |")
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
        if s.get("fps"):
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
