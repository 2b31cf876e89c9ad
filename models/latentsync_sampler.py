"""LatentSync's sampling: DDIM over a window of frames with audio classifier-free guidance.

What upstream's pipeline computes for one window (`LipsyncPipeline.__call__`):
- the UNet input per step is [noisy latents (4), mask (1), masked-image latents (4),
  reference latents (4)] -> 13 channels, frames on dim 2;
- guidance: the unconditional branch sees all-zero audio; eps = eps_u + g (eps_a - eps_u);
  g <= 1 runs the conditional branch alone (half the work);
- the initial noise is one [4, h, w] map shared by every frame (temporal stability);
- DDIM with LatentSync's scheduler config, eta 0 (deterministic given the noise).

`cache_interval` > 1 applies DeepCache: a full UNet pass every `cache_interval` steps and,
in between, only the outermost layers with the deep features reused (see
`models.latentsync.unet3d`).
"""
from __future__ import annotations

import torch

SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": False,
    "steps_offset": 1, "prediction_type": "epsilon",
}


def make_scheduler():
    from diffusers import DDIMScheduler
    return DDIMScheduler(**SCHEDULER_CONFIG)


def guided(eps: torch.Tensor, guidance: float) -> torch.Tensor:
    """Combine a [2B, ...] batch of (unconditional, audio) predictions."""
    uncond, cond = eps.chunk(2)
    return uncond + guidance * (cond - uncond)


class LatentSyncSampler:
    def __init__(self, unet, steps: int = 20, guidance: float = 1.5, cache_interval: int = 0,
                 eta: float = 0.0):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.unet = unet
        self.steps = steps
        self.guidance = guidance
        self.cache_interval = cache_interval
        self.eta = eta
        self.scheduler = make_scheduler()

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0

    def unet_calls(self) -> tuple[int, int]:
        """(full, shallow) UNet passes per window."""
        if self.cache_interval > 1:
            from lipgraph.models.latentsync.unet3d import deepcache_is_full_step
            full = sum(deepcache_is_full_step(j, self.cache_interval) for j in range(self.steps))
            return full, self.steps - full
        return self.steps, 0

    @torch.inference_mode()
    def sample(self, noise: torch.Tensor, mask: torch.Tensor, masked: torch.Tensor,
               ref: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """noise [4, h, w]; mask [F, 1, h, w]; masked, ref [F, 4, h, w]; audio [F, T, C].
        Returns the denoised latents [F, 4, h, w]."""
        from lipgraph.models.latentsync.unet3d import deepcache_is_full_step
        dtype = self.unet.dtype
        device = masked.device
        f = masked.shape[0]

        def clip(x):          # [F, C, h, w] -> [1, C, F, h, w]
            return x.to(device=device, dtype=dtype).permute(1, 0, 2, 3).unsqueeze(0)

        cond = torch.cat([clip(mask), clip(masked), clip(ref)], dim=1)
        audio = audio.to(device=device, dtype=dtype).unsqueeze(0)          # [1, F, T, C]
        if self.cfg:
            cond = torch.cat([cond, cond])
            audio = torch.cat([torch.zeros_like(audio), audio])
        sched = self.scheduler
        sched.set_timesteps(self.steps, device=device)
        latents = noise.to(device=device, dtype=dtype)[None, :, None].expand(1, -1, f, -1, -1)
        latents = latents * sched.init_noise_sigma
        cache = None
        for j, t in enumerate(sched.timesteps):
            x = torch.cat([latents, latents]) if self.cfg else latents
            x = torch.cat([sched.scale_model_input(x, t), cond], dim=1)
            if self.cache_interval > 1:
                if cache is None or deepcache_is_full_step(j, self.cache_interval):
                    eps, cache = self.unet.forward_full(x, t, audio)
                else:
                    eps = self.unet.forward_shallow(x, t, audio, cache)
            else:
                eps = self.unet(x, t, audio)
            if self.cfg:
                eps = guided(eps, self.guidance)
            latents = sched.step(eps, t, latents, eta=self.eta).prev_sample
        return latents[0].permute(1, 0, 2, 3)                             # [F, 4, h, w]
