"""Our DeepCache (`LatentSyncSampler(cache_interval=3)`) computes what the `DeepCache` package
computes on the same UNet3D: LatentSync's inference script enables it with
`DeepCacheSDHelper(pipe).set_params(cache_interval=3, cache_branch_id=0)`.

The helper wraps `pipe.unet.forward` (to read the step index from `pipe.scheduler.timesteps`)
and the forwards of the UNet's blocks and their resnets / attentions / samplers; on a skipped
step the wrapped modules return their output from the last full step. So the reference here is
our own UNet3D driven by the helper through a minimal copy of upstream's denoising loop.
"""
import pytest
import torch

pytest.importorskip("diffusers")
DeepCacheSDHelper = pytest.importorskip("DeepCache").DeepCacheSDHelper

from lipgraph.models.latentsync.config import LATENTSYNC_STAGE2_CONFIG  # noqa: E402
from lipgraph.models.latentsync_sampler import LatentSyncSampler, make_scheduler  # noqa: E402
from lipgraph.models.latentsync_unet3d import UNet3DConditionModel  # noqa: E402
from lipgraph.models.random_weights import TINY_UNET3D, randomise_unet3d  # noqa: E402

torch.set_num_threads(2)

STEPS, INTERVAL, FRAMES, HW, AUDIO_TOKENS = 20, 3, 4, 8, 10


class HelperPipe:
    """The smallest pipeline DeepCacheSDHelper accepts (it reads `unet` and `scheduler`).
    `__call__` is upstream LipsyncPipeline's loop for one window, with no caching of its own:
    the UNet is called as `unet(input, t, encoder_hidden_states=...)`, t positional."""

    def __init__(self, unet):
        self.unet = unet
        self.scheduler = make_scheduler()

    @torch.no_grad()
    def __call__(self, noise, mask, masked, ref, audio, guidance):
        cfg = guidance > 1.0
        f = masked.shape[0]

        def clip(x):          # [F, C, h, w] -> [1, C, F, h, w]
            return x.permute(1, 0, 2, 3).unsqueeze(0)

        mask, masked, ref = clip(mask), clip(masked), clip(ref)
        if cfg:
            mask, masked, ref = (torch.cat([x, x]) for x in (mask, masked, ref))
            audio = torch.cat([torch.zeros_like(audio), audio])      # [2F, T, C], batch outer
        self.scheduler.set_timesteps(STEPS)
        latents = noise[None, :, None].repeat(1, 1, f, 1, 1) * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            x = torch.cat([latents] * 2) if cfg else latents
            x = torch.cat([self.scheduler.scale_model_input(x, t), mask, masked, ref], dim=1)
            eps = self.unet(x, t, encoder_hidden_states=audio)
            if cfg:
                uncond, cond = eps.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            latents = self.scheduler.step(eps, t, latents, eta=0.0).prev_sample
        return latents[0].permute(1, 0, 2, 3)


@pytest.fixture(scope="module")
def unet():
    # layers_per_block 2 as published: 3 layers per up block, so the helper's reversed layer
    # numbering inside the final up block matters.
    torch.manual_seed(0)
    model = UNet3DConditionModel.from_config({**LATENTSYNC_STAGE2_CONFIG, **TINY_UNET3D, "layers_per_block": 2})
    randomise_unet3d(model, 7)   # upstream zero-initialises conv_in/conv_out/motion proj_out
    return model.eval().requires_grad_(False)


def window(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(4, HW, HW, generator=g),
            (torch.rand(FRAMES, 1, HW, HW, generator=g) > 0.5).float(),
            torch.randn(FRAMES, 4, HW, HW, generator=g),
            torch.randn(FRAMES, 4, HW, HW, generator=g),
            torch.randn(FRAMES, AUDIO_TOKENS, 32, generator=g))


class DeepCounter:
    """Counts real computations of the mid block (the helper does not wrap its resnets)."""

    def __init__(self, unet):
        self.n = 0
        self.handle = unet.mid_block.resnets[0].register_forward_hook(self)

    def __call__(self, *_):
        self.n += 1

    def take(self):
        n, self.n = self.n, 0
        return n


@pytest.mark.parametrize("guidance", [1.5, 1.0])
def test_sampler_cache_matches_deepcache_sd_helper(unet, guidance):
    pipe = HelperPipe(unet)
    counter = DeepCounter(unet)
    full_steps = len(range(0, STEPS, INTERVAL))
    try:
        first = window(1)
        exact = LatentSyncSampler(unet, STEPS, guidance).sample(*first)
        # the reference loop is our sampler's loop: identical without caching
        assert torch.equal(pipe(*first, guidance), exact)
        assert counter.take() == 2 * STEPS

        ours = LatentSyncSampler(unet, STEPS, guidance, cache_interval=INTERVAL)
        mine = [ours.sample(*first), ours.sample(*window(2))]
        assert counter.take() == 2 * full_steps

        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=INTERVAL, cache_branch_id=0)
        helper.enable()
        try:
            # two windows under one enable(), as upstream runs a whole video
            theirs = [pipe(*first, guidance), pipe(*window(2), guidance)]
        finally:
            helper.disable()
        assert counter.take() == 2 * full_steps      # the same steps run in full
    finally:
        counter.handle.remove()

    scale = exact.abs().max().item()
    for a, b in zip(mine, theirs):
        diff = (a - b).abs().max().item()
        assert diff <= 1e-5 * scale, f"ours vs DeepCacheSDHelper: max |diff| {diff:.3g} (scale {scale:.3g})"
    # caching does change the result, so the comparison above can fail
    for cached in (mine[0], theirs[0]):
        assert (cached - exact).abs().max().item() > 1e-3 * scale
