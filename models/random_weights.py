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

AUDIO_DIM = 32          # whisper d_model of the tiny models = the UNet's cross-attention dim

TINY_UNET = {
    "act_fn": "silu", "attention_head_dim": 2, "block_out_channels": [32, 64],
    "center_input_sample": False, "cross_attention_dim": AUDIO_DIM,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8, "layers_per_block": 1,
    "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 8, "out_channels": 4,
    "sample_size": 32, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}
TINY_VAE = dict(block_out_channels=[8, 16, 16, 16], down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, norm_num_groups=8,
                latent_channels=4, sample_size=256)


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _musetalk_unet(root: str, config: dict, seed: int | None = None) -> tuple[str, str]:
    """`musetalkV15/unet.pth` (a plain state dict) and `musetalk.json` for `config`; with
    `seed`, the weights are perturbed further (diffusers zero-initialises some layers)."""
    from diffusers import UNet2DConditionModel
    mt = os.path.join(root, "musetalkV15")
    os.makedirs(mt, exist_ok=True)
    cfg_path = os.path.join(mt, "musetalk.json")
    with open(cfg_path, "w") as f:
        json.dump({"_class_name": "UNet2DConditionModel", **config}, f)
    unet = UNet2DConditionModel(**config)
    if seed is not None:
        _randomize(unet, seed)
    unet_path = os.path.join(mt, "unet.pth")
    torch.save(unet.state_dict(), unet_path)
    return unet_path, cfg_path


def tiny_weights(root: str, bisenet: bool = False) -> dict:
    """A MuseTalk-style `models/` folder with tiny random models; returns explicit paths."""
    from diffusers import AutoencoderKL
    from transformers import WhisperConfig, WhisperModel
    torch.manual_seed(0)
    unet_path, cfg_path = _musetalk_unet(root, TINY_UNET, seed=1)

    vae_dir = os.path.join(root, "sd-vae")
    AutoencoderKL(**TINY_VAE).save_pretrained(vae_dir)

    whisper_dir = os.path.join(root, "whisper")
    wcfg = WhisperConfig(d_model=AUDIO_DIM, encoder_layers=1, encoder_attention_heads=2,
                         encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2,
                         decoder_ffn_dim=64, vocab_size=100, max_target_positions=32,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
    whisper = WhisperModel(wcfg)
    _randomize(whisper.encoder, 2)
    whisper.save_pretrained(whisper_dir)

    paths = {"root": root, "unet": unet_path, "unet_config": cfg_path, "vae": vae_dir,
             "whisper": whisper_dir, "parser": ""}
    if bisenet:
        from lipgraph.models.bisenet import BiSeNet
        parse_dir = os.path.join(root, "face-parse-bisent")
        os.makedirs(parse_dir, exist_ok=True)
        net = BiSeNet(19)
        _randomize(net, 3)
        paths["parser"] = os.path.join(parse_dir, "79999_iter.pth")
        torch.save(net.state_dict(), paths["parser"])
    return paths


WHISPER_TINY_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6,
                     "n_audio_layer": 4, "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 384,
                     "n_text_head": 6, "n_text_layer": 4}


def full_size_weights(root: str) -> dict:
    """Full-size MuseTalk v1.5 models with random weights (for timing only): the published
    UNet config, sd-vae-ft-mse's config and whisper-tiny's dimensions."""
    from diffusers import AutoencoderKL
    from transformers import WhisperModel

    from lipgraph.models.musetalk_unet import MUSETALK_V15_UNET_CONFIG
    from lipgraph.models.vae import SD_VAE_FT_MSE_CONFIG
    from lipgraph.models.whisper import config_from_openai_dims
    torch.manual_seed(0)
    unet_path, cfg_path = _musetalk_unet(root, MUSETALK_V15_UNET_CONFIG)
    vae_dir = os.path.join(root, "sd-vae")
    AutoencoderKL(**SD_VAE_FT_MSE_CONFIG).save_pretrained(vae_dir)
    whisper_dir = os.path.join(root, "whisper")
    WhisperModel(config_from_openai_dims(WHISPER_TINY_DIMS)).save_pretrained(whisper_dir)
    return {"root": root, "unet": unet_path, "unet_config": cfg_path, "vae": vae_dir,
            "whisper": whisper_dir, "parser": ""}


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
    from lipgraph.models.latentsync.config import LATENTSYNC_STAGE2_CONFIG
    from lipgraph.models.latentsync_unet3d import UNet3DConditionModel
    cfg = dict(LATENTSYNC_STAGE2_CONFIG, **TINY_UNET3D)
    torch.manual_seed(0)
    model = UNet3DConditionModel.from_config(cfg)
    randomise_unet3d(model, 4)
    folder = os.path.join(root, folder_name)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "latentsync_unet.pt")
    torch.save({"state_dict": model.state_dict()}, path)
    cfg_path = os.path.join(folder, "unet_config.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return {"unet3d": path, "unet3d_config": cfg_path}


SIZES = ("tiny", "full")
LATENTSYNC_FOLDER = "latentsync-1.5"
_DONE = ".complete"


def full_latentsync(root: str, folder_name: str = LATENTSYNC_FOLDER) -> dict:
    """LatentSync 1.5's UNet3D at its published size (1.27 B parameters) with random weights."""
    from lipgraph.models.latentsync.config import LATENTSYNC_STAGE2_CONFIG
    from lipgraph.models.latentsync_unet3d import UNet3DConditionModel
    torch.manual_seed(0)
    model = UNet3DConditionModel.from_config(dict(LATENTSYNC_STAGE2_CONFIG))
    randomise_unet3d(model, 4)
    folder = os.path.join(root, folder_name)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "latentsync_unet.pt")
    torch.save({"state_dict": model.state_dict()}, path)
    return {"unet3d": path, "unet3d_config": ""}


def default_root() -> str:
    from lipgraph.cache import cache_folder
    return cache_folder("random-weights")


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
    if size not in SIZES:
        raise ValueError(f"random weights: size must be one of {', '.join(SIZES)}, got {size!r}")
    base = os.path.join(root or default_root(), size)
    main = os.path.join(base, "models")
    if size == "tiny":
        _ensure(main, lambda d: tiny_weights(d, bisenet=True))
    else:
        _ensure(main, full_size_weights)
    paths = {"root": main, "unet": os.path.join(main, "musetalkV15", "unet.pth"),
             "unet_config": os.path.join(main, "musetalkV15", "musetalk.json"),
             "vae": os.path.join(main, "sd-vae"), "whisper": os.path.join(main, "whisper"),
             "parser": os.path.join(main, "face-parse-bisent", "79999_iter.pth"),
             "unet3d": "", "unet3d_config": ""}
    if latentsync:
        folder = os.path.join(base, LATENTSYNC_FOLDER)
        if size == "tiny":
            _ensure(folder, lambda d: tiny_latentsync(d, folder_name="."))
            paths["unet3d_config"] = os.path.join(folder, "unet_config.json")
        else:
            _ensure(folder, lambda d: full_latentsync(d, folder_name="."))
        paths["unet3d"] = os.path.join(folder, "latentsync_unet.pt")
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
