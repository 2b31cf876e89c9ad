#!/usr/bin/env python3
"""Time per window of `--frames` face frames for the surgical UNet's models, on the same
frames, in one run:

  LatentSync  guidance 1.5 / 1.0, each without and with DeepCache (cache_interval 3)
  MuseTalk    one batched call over the same frames

plus DeepCache's deviation from the uncached result (same noise and inputs). Models have
random weights (`--size full`: the published configs; `tiny` for a quick check), so the
numbers measure compute, not quality. On a CPU a full-size 20-step window takes many
minutes: lower `--steps`; the 20-step estimate is then printed from the measured
time of one full and one shallow UNet pass (marked "est.").

    python bench/unet.py [--size full|tiny] [--frames 16] [--steps 20] [--device cuda]
                         [--dtype float16] [--resolution 256|512]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def build(size: str, device: str, dtype):
    from diffusers import UNet2DConditionModel

    from lipgraph.models.latentsync.config import LATENTSYNC_STAGE2_CONFIG
    from lipgraph.models.latentsync_unet3d import UNet3DConditionModel
    from lipgraph.models.musetalk_unet import MUSETALK_V15_UNET_CONFIG, MuseTalkUNet
    from lipgraph.models.random_weights import TINY_UNET, TINY_UNET3D, randomise_unet3d
    torch.manual_seed(0)
    ls_cfg = dict(LATENTSYNC_STAGE2_CONFIG, **(TINY_UNET3D if size == "tiny" else {}))
    mt_cfg = TINY_UNET if size == "tiny" else MUSETALK_V15_UNET_CONFIG
    ls = UNet3DConditionModel.from_config(ls_cfg)
    randomise_unet3d(ls, 1)
    ls = ls.to(device=device, dtype=dtype).eval().requires_grad_(False)
    mt = MuseTalkUNet(UNet2DConditionModel(**mt_cfg)).to(device=device, dtype=dtype).eval()
    mt.requires_grad_(False)
    return ls, mt, ls_cfg["cross_attention_dim"], mt_cfg["cross_attention_dim"]


def measure(size: str = "full", device: str = "cpu", dtype=torch.float32, frames: int = 16,
            steps: int = 20, resolutions=(256,), repeat: int = 1, models=None) -> dict:
    """Window times at each resolution, as `main` prints them: {resolution: {"runs":
    {(guidance, cache): (seconds, 20-step estimate, output)}, "musetalk_s": seconds}}.
    `models`: what `build` returned, to reuse one build across calls."""
    from lipgraph.models.latentsync_sampler import LatentSyncSampler
    torch.set_grad_enabled(False)
    ls, mt, ls_dim, mt_dim = models or build(size, device, dtype)
    f = frames
    out = {}
    for resolution in resolutions:
        h = resolution // 8
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(4, h, h, generator=g)
        mask = torch.ones(f, 1, h, h)
        mask[:, :, h // 2:] = 0
        masked, ref = torch.randn(f, 4, h, h, generator=g), torch.randn(f, 4, h, h, generator=g)
        inputs = [t.to(device) for t in (noise, mask, masked, ref)]
        audio_ls = torch.randn(f, 50, ls_dim, generator=g)

        # one UNet pass of each kind (batch 2 = with guidance), for the 20-step estimate
        x = torch.randn(2, 13, f, h, h, generator=g).to(device, dtype)
        aud = torch.cat([torch.zeros_like(audio_ls), audio_ls])[None].reshape(2, f, 50, ls_dim).to(device, dtype)
        # untimed first pass: lazy initialisation and kernel selection would count otherwise
        timed(lambda: ls.forward_full(x, 500, aud), device)
        passes = {}
        for b in (1, 2):
            t_full, (_, cache) = timed(lambda: ls.forward_full(x[:b], 500, aud[:b]), device)
            t_shallow, _ = timed(lambda: ls.forward_shallow(x[:b], 500, aud[:b], cache), device)
            passes[b] = (t_full, t_shallow)
        del x, aud, cache

        results = {}
        for guidance in (1.5, 1.0):
            for cache in (0, 3):
                sampler = LatentSyncSampler(ls, steps, guidance, cache)
                t, res = timed(lambda: sampler.sample(*inputs, audio_ls.to(device)), device, repeat)
                n_full, n_shallow = LatentSyncSampler(ls, 20, guidance, cache).unet_calls()
                b = 2 if guidance > 1 else 1
                est20 = n_full * passes[b][0] + n_shallow * passes[b][1]
                results[(guidance, cache)] = (t, est20, res.float().cpu())
        mt_lat = torch.randn(f, 8, h, h, generator=g).to(device, dtype)
        mt_audio = torch.randn(f, 50, mt_dim, generator=g).to(device, dtype)
        t_mt, _ = timed(lambda: mt(mt_lat, mt_audio), device, repeat)
        out[resolution] = {"runs": results, "musetalk_s": t_mt}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float16 / bfloat16 / float32")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.float16 if a.device.startswith("cuda") else torch.float32)
    f = a.frames
    print(f"{a.size} models, {f} frames at {a.resolution} px, {a.steps} steps, {a.device} {dtype}")
    m = measure(a.size, a.device, dtype, f, a.steps, (a.resolution,), a.repeat)[a.resolution]
    results, t_mt = m["runs"], m["musetalk_s"]

    print(f"\n{'model':<36} {'window s':>9} {'per frame ms':>13} {'20-step est. s':>15}")
    for (guidance, cache), (t, est20, _) in results.items():
        label = f"LatentSync g={guidance} " + (f"DeepCache {cache}" if cache else "no cache")
        print(f"{label:<36} {t:9.3f} {1e3 * t / f:13.1f} {est20:15.3f}")
    print(f"{'MuseTalk (one call, timestep 0)':<36} {t_mt:9.3f} {1e3 * t_mt / f:13.1f} {'-':>15}")
    base = results[(1.5, 0)]
    for guidance in (1.5, 1.0):
        ref_out, cached = results[(guidance, 0)][2], results[(guidance, 3)][2]
        dev = (cached - ref_out).abs()
        rel = float(dev.mean() / ref_out.abs().mean())
        print(f"DeepCache g={guidance}: speed-up {results[(guidance, 0)][0] / results[(guidance, 3)][0]:.2f}x "
              f"measured, {results[(guidance, 0)][1] / results[(guidance, 3)][1]:.2f}x est. at 20 steps; "
              f"deviation mean {float(dev.mean()):.4g} (relative {rel:.3%}), max {float(dev.max()):.4g}")
    print(f"guidance off (g=1.0) vs 1.5: {base[0] / results[(1.0, 0)][0]:.2f}x faster")
    print(f"LatentSync g=1.5 vs MuseTalk per window: {base[0] / t_mt:.1f}x the time")


if __name__ == "__main__":
    main()
