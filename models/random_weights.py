"""Randomly initialised models saved in the real checkpoint formats and folder layout.

They let a graph run end to end without any download (`run_graph.py --random-weights`),
and give tests and benchmarks models to load through the same strict loaders as the real
files. `tiny` models are small configs of the same architectures (fast on a CPU); `full`
models have the published sizes (for timing). Their output is meaningless: nothing made
with them is lip-synced.
"""
from __future__ import annotations

import json
import os
import shutil

import torch

from lipgraph.models.sd_unet_layout import SD_UNET_LAYOUT

AUDIO_DIM = 32          # whisper d_model of the tiny models = the UNet's cross-attention dim

# MuseTalk's UNet layout with smaller widths.
TINY_UNET = dict(SD_UNET_LAYOUT, in_channels=8, attention_head_dim=2, block_out_channels=[32, 64],
                 cross_attention_dim=AUDIO_DIM, layers_per_block=1, norm_num_groups=8, sample_size=32,
                 down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
TINY_VAE = dict(block_out_channels=[8, 16, 16, 16], down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, norm_num_groups=8,
                latent_channels=4, sample_size=256)


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _paths(root: str, parser: str = "") -> dict:
    """The files of a MuseTalk-style `models/` folder, named as a graph's stages take them."""
    return {"root": root, "unet": os.path.join(root, "musetalkV15", "unet.pth"),
            "unet_config": os.path.join(root, "musetalkV15", "musetalk.json"),
            "vae": os.path.join(root, "sd-vae"), "whisper": os.path.join(root, "whisper"), "parser": parser}


def _musetalk_unet(root: str, config: dict, seed: int | None = None) -> None:
    """`musetalkV15/unet.pth` (a plain state dict) and `musetalk.json` for `config`; with
    `seed`, the weights are perturbed further (diffusers zero-initialises some layers)."""
    from diffusers import UNet2DConditionModel
    paths = _paths(root)
    os.makedirs(os.path.dirname(paths["unet"]), exist_ok=True)
    with open(paths["unet_config"], "w") as f:
        json.dump({"_class_name": "UNet2DConditionModel", **config}, f)
    unet = UNet2DConditionModel(**config)
    if seed is not None:
        _randomize(unet, seed)
    torch.save(unet.state_dict(), paths["unet"])


def tiny_weights(root: str, bisenet: bool = False) -> dict:
    """A MuseTalk-style `models/` folder with tiny random models; returns explicit paths."""
    from diffusers import AutoencoderKL
    from transformers import WhisperConfig, WhisperModel
    torch.manual_seed(0)
    paths = _paths(root)
    _musetalk_unet(root, TINY_UNET, seed=1)
    AutoencoderKL(**TINY_VAE).save_pretrained(paths["vae"])
    wcfg = WhisperConfig(d_model=AUDIO_DIM, encoder_layers=1, encoder_attention_heads=2,
                         encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2,
                         decoder_ffn_dim=64, vocab_size=100, max_target_positions=32,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
    whisper = WhisperModel(wcfg)
    _randomize(whisper.encoder, 2)
    whisper.save_pretrained(paths["whisper"])
    if bisenet:
        from lipgraph.models.bisenet import BiSeNet
        paths["parser"] = os.path.join(root, "face-parse-bisent", "79999_iter.pth")
        os.makedirs(os.path.dirname(paths["parser"]), exist_ok=True)
        net = BiSeNet(19)
        _randomize(net, 3)
        torch.save(net.state_dict(), paths["parser"])
    return paths


def full_size_weights(root: str) -> dict:
    """Full-size MuseTalk v1.5 models with random weights (for timing only): the published
    UNet config, sd-vae-ft-mse's config and whisper-tiny's dimensions."""
    from diffusers import AutoencoderKL
    from transformers import WhisperModel

    from lipgraph.models.musetalk_unet import MUSETALK_V15_UNET_CONFIG
    from lipgraph.models.vae import SD_VAE_FT_MSE_CONFIG
    from lipgraph.models.whisper import WHISPER_TINY_DIMS, config_from_openai_dims
    torch.manual_seed(0)
    paths = _paths(root)
    _musetalk_unet(root, MUSETALK_V15_UNET_CONFIG)
    AutoencoderKL(**SD_VAE_FT_MSE_CONFIG).save_pretrained(paths["vae"])
    WhisperModel(config_from_openai_dims(WHISPER_TINY_DIMS)).save_pretrained(paths["whisper"])
    return paths


TINY_UNET3D = {"block_out_channels": [32, 64, 64, 64], "norm_num_groups": 8,
               "cross_attention_dim": AUDIO_DIM, "layers_per_block": 1}


def randomise_unet3d(model: torch.nn.Module, seed: int = 0) -> None:
    """LatentSync zero-initialises conv_in, conv_out and the motion modules' output
    projections: give them (and the norms) values so a random model's output is not zero."""
    import math
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                mod.weight.add_(0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.add_(0.1 * torch.randn(mod.bias.shape, generator=g))
            if mod is model.conv_in or mod is model.conv_out or name.endswith("temporal_transformer.proj_out"):
                bound = 1 / math.sqrt(mod.weight[0].numel())
                mod.weight.uniform_(-bound, bound, generator=g)
                mod.bias.uniform_(-bound, bound, generator=g)


def tiny_latentsync(root: str, folder_name: str = "latentsync") -> dict:
    """A tiny random LatentSync UNet3D as `latentsync_unet.pt` ({"state_dict": ...}) plus
    the config it was built from (the published one with smaller widths)."""
    return _latentsync(os.path.join(root, folder_name), TINY_UNET3D)


def _latentsync(folder: str, smaller: dict | None = None) -> dict:
    """A random UNet3D of the published config (LatentSync 1.5's, 1.27 B parameters) with the
    `smaller` overrides; with overrides the config is written beside it."""
    from lipgraph.models.latentsync.config import LATENTSYNC_STAGE2_CONFIG
    from lipgraph.models.latentsync_unet3d import UNet3DConditionModel
    cfg = dict(LATENTSYNC_STAGE2_CONFIG, **(smaller or {}))
    torch.manual_seed(0)
    model = UNet3DConditionModel.from_config(cfg)
    randomise_unet3d(model, 4)
    os.makedirs(folder, exist_ok=True)
    paths = {"unet3d": os.path.join(folder, "latentsync_unet.pt"), "unet3d_config": ""}
    torch.save({"state_dict": model.state_dict()}, paths["unet3d"])
    if smaller:
        paths["unet3d_config"] = os.path.join(folder, "unet_config.json")
        with open(paths["unet3d_config"], "w") as f:
            json.dump(cfg, f)
    return paths


SIZES = ("tiny", "full")
LATENTSYNC_FOLDER = "latentsync-1.5"
_DONE = ".complete"


def _ensure(folder: str, build) -> None:
    """Build `folder` once: into a temporary sibling, renamed when complete, so an
    interrupted build is never mistaken for a finished one."""
    if os.path.isfile(os.path.join(folder, _DONE)):
        return
    tmp = f"{folder}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        build(tmp)
        open(os.path.join(tmp, _DONE), "w").close()
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_random_weights(size: str, latentsync: bool, root: str | None = None) -> dict:
    """A MuseTalk-style `models/` folder of random models of `size`, built on first use and
    kept (under ~/.cache/lipgraph or $LIPGRAPH_CACHE). Returns the paths a graph needs, named
    as `tiny_weights` names them."""
    from lipgraph.cache import cache_folder
    if size not in SIZES:
        raise ValueError(f"random weights: size must be one of {', '.join(SIZES)}, got {size!r}")
    base = os.path.join(root or cache_folder("random-weights"), size)
    main = os.path.join(base, "models")
    tiny = size == "tiny"
    _ensure(main, (lambda d: tiny_weights(d, bisenet=True)) if tiny else full_size_weights)
    paths = dict(_paths(main, os.path.join(main, "face-parse-bisent", "79999_iter.pth")),
                 unet3d="", unet3d_config="")
    if latentsync:
        folder = os.path.join(base, LATENTSYNC_FOLDER)
        _ensure(folder, lambda d: _latentsync(d, TINY_UNET3D if tiny else None))
        paths["unet3d"] = os.path.join(folder, "latentsync_unet.pt")
        if tiny:
            paths["unet3d_config"] = os.path.join(folder, "unet_config.json")
    return paths


def _takes(cls) -> dict[str, str]:
    """param -> the random model file it takes, as a model stage declares (`random_weights`)."""
    return getattr(cls, "random_weights", {})


def uses_latentsync(graph) -> bool:
    """Whether a stage that takes the LatentSync UNet asks for LatentSync (as written: without
    weights, binding has already switched it to its MuseTalk fallback)."""
    return any("unet3d" in _takes(spec.cls).values()
               and (spec.declared or spec.params).get("model") == "latentsync"
               for spec in graph.stages.values())


def weight_sets(stages: dict, paths: dict) -> list[str]:
    """--set lines that point every model stage (stage name -> class) at the files in `paths`
    (named as `tiny_weights` names them), by explicit file params (the weights-folder lookup
    checks published file sizes)."""
    return [f"{name}.{param}={paths[key]}" for name, cls in stages.items()
            for param, key in _takes(cls).items() if paths.get(key)]


def random_weight_sets(graph, paths: dict) -> list[str]:
    """`weight_sets` for the stages of a loaded graph."""
    return weight_sets({name: spec.cls for name, spec in graph.stages.items()}, paths)
