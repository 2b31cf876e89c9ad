"""MuseTalk v1.5 UNet and SD VAE: structure against the published specs, strict loading,
positional encoding, MuseTalk's masked/reference encoding and decoding."""

import json
import math
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from skimage import data as skdata

from lipgraph.models.musetalk_unet import (
    MuseTalkUNet,
    audio_positional_encoding,
    build_musetalk_unet,
    load_musetalk_unet,
    unet_config,
)
from lipgraph.models.vae import SCALING_FACTOR, SD_VAE_FT_MSE_CONFIG, SDVAE, build_vae, load_vae
from lipgraph.models.checkpoint import StateDictMismatchError
from tests.spec_keys import read_keys_tsv, state_dict_keys


# ---------------------------------------------------------------- UNet


def small_unet_config(specs_dir):
    cfg = unet_config(os.path.join(specs_dir, "musetalk_unet.config.json"))
    cfg.update(block_out_channels=[32, 64, 64, 64], layers_per_block=1, sample_size=32)
    return cfg


@pytest.fixture
def small_unet(specs_dir):
    torch.manual_seed(0)
    cfg = small_unet_config(specs_dir)
    unet = build_musetalk_unet(cfg, device="cpu").eval()
    return cfg, unet


def test_full_unet_on_meta_matches_spec_key_list(specs_dir):
    unet = build_musetalk_unet(os.path.join(specs_dir, "musetalk_unet.config.json"))
    spec = read_keys_tsv(os.path.join(specs_dir, "musetalk_unet.keys.tsv"))
    ours = state_dict_keys(unet)
    assert ours == spec
    assert len(ours) == 686
    assert sum(p.numel() for p in unet.parameters()) == 849_947_844
    assert all(p.is_meta for p in unet.parameters())


def test_unet_config_drops_diffusers_bookkeeping(specs_dir):
    cfg = unet_config(os.path.join(specs_dir, "musetalk_unet.config.json"))
    assert "_class_name" not in cfg and "_diffusers_version" not in cfg
    assert cfg["cross_attention_dim"] == 384 and cfg["in_channels"] == 8


def test_unet_uses_sdpa_attention(small_unet):
    from diffusers.models.attention_processor import AttnProcessor2_0

    _, unet = small_unet
    procs = list(unet.attn_processors.values())
    assert procs and all(isinstance(p, AttnProcessor2_0) for p in procs)


def test_strict_load_roundtrip(tmp_path, small_unet):
    cfg, unet = small_unet
    state = unet.state_dict()
    path = tmp_path / "unet.pth"
    torch.save(state, path)
    cfg_path = tmp_path / "musetalk.json"
    cfg_path.write_text(json.dumps({"_class_name": "UNet2DConditionModel", **cfg}))

    model = load_musetalk_unet(path, cfg_path, device="cpu")
    assert isinstance(model, MuseTalkUNet)
    assert model.dtype == torch.float32
    assert not model.unet.training
    loaded = model.unet.state_dict()
    assert loaded.keys() == state.keys()
    for k in state:
        assert torch.equal(loaded[k], state[k]), k
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("damage, expected_words", [
    ("missing", ["missing 1", "conv_in.bias"]),
    ("unexpected", ["unexpected 1", "extra.weight"]),
    ("shape", ["wrong shape 1", "conv_out.weight", "[4, 32, 3, 3]"]),
])
def test_strict_load_rejects_bad_checkpoints(tmp_path, small_unet, damage, expected_words):
    cfg, unet = small_unet
    state = dict(unet.state_dict())
    if damage == "missing":
        del state["conv_in.bias"]
    elif damage == "unexpected":
        state["extra.weight"] = torch.zeros(3)
    else:
        state["conv_out.weight"] = torch.zeros(5, 32, 3, 3)
    path = tmp_path / "unet.pth"
    torch.save(state, path)
    with pytest.raises(StateDictMismatchError) as err:
        load_musetalk_unet(path, cfg)
    msg = str(err.value)
    assert str(path) in msg
    for word in expected_words:
        assert word in msg


def test_missing_unet_file_and_config_name_the_path(tmp_path, specs_dir):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_musetalk_unet(tmp_path / "nope.pth", os.path.join(specs_dir, "musetalk_unet.config.json"))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        unet_config(tmp_path / "missing.json")


def test_positional_encoding_matches_formula():
    pe = audio_positional_encoding(50, 384)
    assert pe.shape == (50, 384) and pe.dtype == torch.float32
    pos = np.arange(50, dtype=np.float64)[:, None]
    i = np.arange(0, 384, 2, dtype=np.float64)[None, :]
    angle = pos / np.power(10000.0, i / 384)
    ref = np.empty((50, 384))
    ref[:, 0::2] = np.sin(angle)
    ref[:, 1::2] = np.cos(angle)
    np.testing.assert_allclose(pe.numpy(), ref, atol=1e-5)  # fp32 table
    # Position 0 is (0, 1, 0, 1, ...); a later row is not constant.
    assert torch.equal(pe[0, 0::2], torch.zeros(192)) and torch.equal(pe[0, 1::2], torch.ones(192))
    assert pe[7, 0] == pytest.approx(math.sin(7.0), abs=1e-6)
    # a longer table starts with the same rows (MuseTalk slices a 5000-row buffer)
    assert torch.equal(audio_positional_encoding(5000, 384)[:50], pe)
    with pytest.raises(ValueError, match="5001"):
        audio_positional_encoding(5001, 384)


def test_forward_shape_and_positional_encoding_is_applied(small_unet):
    _, unet = small_unet
    model = MuseTalkUNet(unet)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 8, 32, 32, generator=g)
    audio = torch.randn(2, 50, 384, generator=g)
    with torch.no_grad():
        out = model(latents, audio)
    assert out.shape == (2, 4, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # The same call without the wrapper: audio + pe, timestep 0 (a 16x16 crop keeps it quick).
    lat, aud = latents[:1, :, :16, :16], audio[:1]
    pe = audio_positional_encoding(50, 384)
    with torch.no_grad():
        out = model(lat, aud)
        with_pe = unet(lat, 0, encoder_hidden_states=aud + pe).sample
        raw = unet(lat, 0, encoder_hidden_states=aud).sample
        at_t500 = unet(lat, 500, encoder_hidden_states=aud + pe).sample
    torch.testing.assert_close(out, with_pe, rtol=1e-5, atol=1e-5)
    # Leaving the encoding out (or a non-zero timestep) changes the prediction.
    assert (out - raw).abs().max() > 1e-3
    assert (out - at_t500).abs().max() > 1e-3


def test_forward_rejects_bad_shapes(small_unet):
    _, unet = small_unet
    model = MuseTalkUNet(unet)
    with pytest.raises(ValueError, match="latents"):
        model(torch.zeros(1, 4, 32, 32), torch.zeros(1, 50, 384))
    with pytest.raises(ValueError, match="audio"):
        model(torch.zeros(1, 8, 32, 32), torch.zeros(1, 50, 80))
    with pytest.raises(ValueError, match="audio"):
        model(torch.zeros(2, 8, 32, 32), torch.zeros(1, 50, 384))


# ---------------------------------------------------------------- VAE

SMALL_VAE = dict(
    block_out_channels=[8, 16, 16, 16],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
    sample_size=256,
)


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    torch.manual_seed(0)
    vae = AutoencoderKL(**SMALL_VAE)
    folder = tmp_path_factory.mktemp("vae") / "sd-vae"
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vae(vae_folder):
    return load_vae(vae_folder, device="cpu")


@pytest.fixture(scope="module")
def crops():
    face = cv2.resize(skdata.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    other = cv2.resize(skdata.coffee(), (256, 256), interpolation=cv2.INTER_AREA)
    return np.stack([face, other])


def test_full_size_vae_matches_published_checkpoint():
    # sd-vae-ft-mse: 248 tensors, 334,615,452 bytes of fp32 data; config.json is 547 bytes.
    vae = build_vae()
    state = vae.state_dict()
    assert len(state) == 248
    assert sum(t.numel() for t in state.values()) * 4 == 334_615_452
    published = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", **SD_VAE_FT_MSE_CONFIG}
    assert len(json.dumps(published, indent=2, sort_keys=True) + "\n") == 547


def test_load_vae_is_strict_and_frozen(vae, vae_folder):
    assert isinstance(vae, SDVAE)
    assert not vae.vae.training
    assert not any(p.requires_grad for p in vae.vae.parameters())
    ref = AutoencoderKL.from_pretrained(vae_folder)
    for k, v in ref.state_dict().items():
        assert torch.equal(vae.vae.state_dict()[k], v), k
    assert vae.scaling_factor == SCALING_FACTOR == 0.18215 and vae.shift_factor == 0.0


def test_encode_musetalk_shapes_order_and_mean(vae, crops):
    lat = vae.encode_musetalk(crops)
    assert lat.shape == (2, 8, 32, 32) and lat.dtype == torch.float32
    torch.testing.assert_close(lat, vae.encode_musetalk(crops), rtol=0, atol=0)  # deterministic
    # Manual reference: mean of the posterior times 0.18215; [masked, reference] on channels.
    px = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1
    masked = px.clone()
    masked[:, :, 128:] = -1
    with torch.no_grad():
        ref = vae.vae.encode(px).latent_dist.mean * 0.18215
        ref_masked = vae.vae.encode(masked).latent_dist.mean * 0.18215
    torch.testing.assert_close(lat[:, 4:], ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lat[:, :4], ref_masked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vae.encode(crops), ref, rtol=1e-4, atol=1e-5)


def test_encode_musetalk_masks_lower_half_in_one_batched_call(vae, crops):
    seen = []
    hook = vae.vae.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        vae.encode_musetalk(torch.from_numpy(crops))
    finally:
        hook.remove()
    assert len(seen) == 1
    x = seen[0]
    assert x.shape == (4, 3, 256, 256)
    px = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(x[2:], px)
    assert torch.equal(x[:2, :, 128:], torch.full_like(x[:2, :, 128:], -1.0))
    assert torch.equal(x[:2, :, :128], px[:, :, :128])


def test_masked_latent_ignores_the_lower_half(vae, crops):
    crops = crops[:1]
    changed = crops.copy()
    changed[:, 128:] = 255 - changed[:, 128:]
    a = vae.encode_musetalk(crops)
    b = vae.encode_musetalk(changed)
    assert torch.equal(a[:, :4], b[:, :4])
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3


def test_sampling_uses_the_generator(vae, crops):
    crops = crops[:1]
    mean = vae.encode_musetalk(crops)
    s1 = vae.encode_musetalk(crops, sample=True, generator=torch.Generator().manual_seed(1))
    s1b = vae.encode_musetalk(crops, sample=True, generator=torch.Generator().manual_seed(1))
    s2 = vae.encode_musetalk(crops, sample=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s1, s1b)
    assert (s1 - s2).abs().max() > 1e-4
    assert (s1 - mean).abs().max() > 1e-4


def test_decode_range_dtype_and_formula(vae, crops):
    lat = vae.encode(crops)
    out = vae.decode(lat)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (2, 256, 256, 3)
    with torch.no_grad():
        x = vae.vae.decode(lat / 0.18215).sample
    ref = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(out, ref)
    as_tensor = vae.decode(lat, to_numpy=False)
    assert as_tensor.dtype == torch.uint8 and as_tensor.shape == (2, 256, 256, 3)
    # A saturated latent decodes to values clamped into 0..255, not wrapped around.
    big = vae.decode(lat * 50)
    with torch.no_grad():
        raw = ((vae.vae.decode(lat * 50 / 0.18215).sample / 2 + 0.5) * 255).permute(0, 2, 3, 1).numpy()
    assert (raw > 255.5).any() and (raw < -0.5).any()          # the case is really saturated
    assert (big[raw > 255.5] == 255).all() and (big[raw < -0.5] == 0).all()


def test_load_vae_accepts_legacy_bin_with_old_attention_names(tmp_path, vae_folder, vae, crops):
    state = AutoencoderKL.from_pretrained(vae_folder).state_dict()
    old = {}
    for k, v in state.items():
        for new, legacy in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        old[k] = v
    assert any(".query.weight" in k for k in old)
    folder = tmp_path / "sd-vae"
    folder.mkdir()
    shutil.copy(vae_folder / "config.json", folder / "config.json")
    torch.save(old, folder / "diffusion_pytorch_model.bin")
    legacy = load_vae(folder)
    torch.testing.assert_close(legacy.encode(crops), vae.encode(crops), rtol=0, atol=0)
    # The weights file itself may be given, with config.json beside it.
    assert load_vae(folder / "diffusion_pytorch_model.bin").vae.config.latent_channels == 4


def test_load_vae_rejects_bad_checkpoint(tmp_path, vae_folder):
    from safetensors.torch import load_file, save_file

    state = load_file(str(vae_folder / "diffusion_pytorch_model.safetensors"))
    state.pop("decoder.conv_out.bias")
    state["encoder.bogus"] = torch.zeros(1)
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(vae_folder / "config.json", folder / "config.json")
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(StateDictMismatchError) as err:
        load_vae(folder)
    msg = str(err.value)
    assert "decoder.conv_out.bias" in msg and "encoder.bogus" in msg and str(folder) in msg


def test_load_vae_missing_files_are_named(tmp_path, vae_folder):
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model"):
        load_vae(tmp_path)
    folder = tmp_path / "noconfig"
    folder.mkdir()
    shutil.copy(vae_folder / "diffusion_pytorch_model.safetensors", folder)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vae(folder)


def test_to_pixels_rejects_non_uint8(vae):
    with pytest.raises(TypeError, match="uint8"):
        vae.encode(np.zeros((1, 256, 256, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        vae.encode(np.zeros((256, 256, 3), np.uint8))
