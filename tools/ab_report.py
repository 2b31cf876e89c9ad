"""The A/B report: JSON-safe figures and the Markdown summary."""
from __future__ import annotations

import math

import numpy as np

from .ab_metrics import TEMPORAL_SIZE


def clean(x):
    """JSON-safe: non-finite floats become None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, np.generic):
        return clean(x.item())
    return x


def _f(v, spec="{:.2f}") -> str:
    return "-" if v is None else spec.format(v)


def _stats(d: dict | None, spec="{:.2f}") -> str:
    return "-" if not d else f"mean {_f(d['mean'], spec)}, min {_f(d['min'], spec)}, p5 {_f(d['p5'], spec)}"


def _face_line(key: str, f: dict, lse: dict | None) -> str:
    models = ", ".join(f"{k} {v}" for k, v in f["models"].items())
    fallback = "" if f.get("fallback_frames") is None else f"; {f['fallback_frames']} fallback"
    ident, t = f["identity"], f["temporal"]
    mouth = "-" if not t["pairs"] else f"{_f(t['output'])} / {_f(t['input'])} (x{_f(t['ratio'])})"
    sync = "-" if not lse else f"{lse['lse_c']:.3f} / {lse['lse_d']:.3f}"
    return (f"- face {key}: {f['frames']} frames ({models}{fallback}); face box outside mouth region: "
            f"PSNR {_stats(ident['psnr_db'])} dB, SSIM {_stats(ident['ssim'], '{:.4f}')}; mouth change "
            f"out / in {mouth}; LSE-C / LSE-D {sync}")


def write_markdown(report: dict, path: str) -> None:
    lines = ["# A/B comparison", ""]
    inp = report["input"]
    lines += [f"Input: `{inp['video']}` ({inp['width']}x{inp['height']}, {inp['frames']} frames at "
              f"{inp['fps']:.3f} fps), dub `{inp['audio']}`.",
              f"Outputs {'lossless (FFV1, RGB)' if report['settings']['lossless'] else 'H.264'}; "
              f"runner `{report['settings']['runner']}`; graphs run one after the other.", ""]
    if report["settings"]["common_sets"]:
        lines += ["Sets for both: " + ", ".join(f"`{s}`" for s in report["settings"]["common_sets"]), ""]
    graphs = report["graphs"]
    for label, g in graphs.items():
        own = ", ".join(f"`{s}`" for s in g["sets_own"])
        lines.append(f"- **{label}**: `{g['name']}` from `{g['graph']}`" + (f", sets: {own}" if own else ""))
    lines.append("")

    def row(title, fn):
        lines.append(f"| {title} | " + " | ".join(fn(g) for g in graphs.values()) + " |")

    lines += ["## Summary", "", "| | " + " | ".join(f"{l}: {g['name']}" for l, g in graphs.items()) + " |",
              "|---|" + "---|" * len(graphs)]
    row("exit status", lambda g: str(g["exit_code"]))
    row("frames out", lambda g: str((g.get("throughput") or {}).get("frames", "-")))
    row("frames/s (stream)", lambda g: _f((g.get("throughput") or {}).get("frames_per_s"), "{:.2f}"))
    row("wall s (run)", lambda g: _f(g.get("wall_s")))
    def bottleneck(g):
        b = (g.get("throughput") or {}).get("bottleneck")
        return "-" if not b else f"{b['stage']} ({100 * b['utilization']:.0f}%)"
    row("bottleneck", bottleneck)
    row("fallback frames", lambda g: str((g.get("fallbacks") or {}).get("frames", "-")))
    row("PSNR outside mouth region, dB", lambda g: _stats(((g.get("identity") or {}).get("psnr_db"))))
    row("SSIM outside mouth region", lambda g: _stats(((g.get("identity") or {}).get("ssim")), "{:.4f}"))
    row("mouth change out / in", lambda g: "-" if not (g.get("temporal") or {}).get("pairs") else
        f"{_f(g['temporal']['output'])} / {_f(g['temporal']['input'])} (x{_f(g['temporal']['ratio'])})")
    row("cutaways identical", lambda g: "-" if not g.get("cutaways") else
        f"{g['cutaways']['identical']} / {g['cutaways']['frames']}")
    row("source order", lambda g: "-" if "in_order" not in (g.get("frames") or {}) else
        ("in order" if g["frames"]["in_order"] else "OUT OF ORDER")
        + (", ping-pong" if g["frames"].get("pingpong") else ""))
    row("LSE-C / LSE-D", lambda g: "-" if not (g.get("lse") or {}).get("computed") else
        f"{g['lse']['lse_c']:.3f} / {g['lse']['lse_d']:.3f}")
    lines.append("")

    for label, g in graphs.items():
        lines += [f"## {label}: {g['name']}", ""]
        if g.get("error"):
            lines += ["```", g["error"], "```", ""]
        tp = g.get("throughput")
        if tp:
            lines += ["| stage | type | in | out | items/s | capacity/s | busy s | util | batch |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for name, s in tp["stages"].items():
                util = None if s["utilization"] is None else 100 * s["utilization"]
                lines.append(f"| {name} | {s['type']} | {s['items_in']} | {s['items_out']} | "
                             f"{_f(s['items_per_s'], '{:.1f}')} | {_f(s['capacity_per_s'], '{:.1f}')} | "
                             f"{_f(s['busy_s'])} | {_f(util, '{:.0f}%')} | {_f(s['mean_batch'], '{:.1f}')} |")
            lines.append("")
        fb = (g.get("fallbacks") or {}).get("by_stage") or {}
        for stage, entries in fb.items():
            for key, e in entries.items():
                why = ", ".join(f"{r} x{c}" for r, c in e["reasons"].items()) or "no reason given"
                lines.append(f"- fallback `{stage}.{key}`: {e['count']} ({why})")
        for note in g.get("notes") or []:
            lines.append(f"- note: {note}")
        if g.get("models"):
            by = ", ".join(f"{k} {v}" for k, v in g["models"].items())
            lines.append(f"- frames by model: {by}")
        fr = g.get("frames") or {}
        if fr:
            lines.append(f"- frames: output {fr.get('output_frames')}, input {fr.get('input_frames')}, "
                         f"sidecar lines {fr.get('sidecar_lines', '-')}, index mismatches "
                         f"{fr.get('index_mismatches', '-')}, time mismatches "
                         f"{fr.get('time_mismatches', '-')}")
        faces = g.get("faces") or {}
        several = len(faces) > 1
        if several:
            lines += [_face_line(key, f, ((g.get("lse") or {}).get("faces") or {}).get(key))
                      for key, f in faces.items()]
        for t in (g.get("lse") or {}).get("tracks") or []:
            whose = f" of face {t['face']}" if several else ""
            lines.append(f"- SyncNet track{whose} from frame {t['start_frame']} ({t['frames']} frames): "
                         f"offset {t['offset']}, LSE-C {t['lse_c']:.3f}, LSE-D {t['lse_d']:.3f}")
        lines.append("")
    if report["not_computed"]:
        lines += ["## Not computed", ""] + [f"- {m}" for m in report["not_computed"]] + [""]
    lines += ["## How the figures are made", "",
              "- PSNR over RGB, capped at 100 dB (identical pixels read 100); SSIM on BT.601 luma, Gaussian "
              "window (sigma 1.5, 11 taps), averaged over pixels whose window lies inside the frame and "
              "clear of the mouth region (MuseTalk: the blend mask's box; LatentSync: its mask warped into "
              "the frame, so the resampled upper face counts). Both compare each face frame with the input "
              "frame it came from.",
              "- Mouth change: mean absolute difference (0..255) between consecutive face frames of one "
              f"shot, inside the edit box resampled to {TEMPORAL_SIZE}x{TEMPORAL_SIZE}; the input figure "
              "uses the same boxes on the input frames.",
              "- LSE-C / LSE-D: SyncNet (syncnet_v2) over face tracks at 25 fps, offsets -15..15, "
              "averaged over tracks (Wav2Lip's evaluation); higher LSE-C and lower LSE-D are better.", ""]
    if any(len(g.get("faces") or {}) > 1 for g in graphs.values()):
        lines[-1:-1] = [
            "- Several faces: the frame figures exclude every dubbed face's region; each face (track id, "
            "or place on the frame where the sidecar gives none) has its own line: its frames by model, "
            "fallbacks (its MuseTalk frames in a run that fell back), PSNR/SSIM inside its face box "
            "outside every mouth region (the upper face), its mouth change and its LSE, scored against "
            "the output's one sound track."]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
