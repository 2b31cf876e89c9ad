import copy
import json
import os

import numpy as np
import pytest
import torch

from lipgraph.models.latentsync_unet3d import (
    DeepCacheState,
    UNet3DConditionModel,
    UNetCheckpointError,
    deepcache_is_full_step,
    load_latentsync_unet,
    read_unet_config,
    sinusoid_table,
)
from tests.spec_keys import read_keys_tsv, state_dict_keys
from lipgraph.models.random_weights import randomise_unet3d

torch.set_num_threads(2)


def stage2_config(specs_dir):
    with open(os.path.join(specs_dir, "latentsync_unet3d_stage2.config.json")) as fh:
        return json.load(fh)


def small_config(specs_dir, **overrides):
    cfg = copy.deepcopy(stage2_config(specs_dir))
    cfg.update(block_out_channels=[32, 64, 64, 64], norm_num_groups=8, cross_attention_dim=32,
               layers_per_block=1)
    cfg.update(overrides)
    return cfg


def zero_motion_modules(model):
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith("temporal_transformer.proj_out"):
                mod.weight.zero_()
                mod.bias.zero_()
    return model


def build(cfg, seed=0):
    torch.manual_seed(seed)
    model = UNet3DConditionModel.from_config(cfg)
    randomise_unet3d(model, seed)
    return model.eval().requires_grad_(False)


def inputs(b=1, f=3, hw=8, c=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 13, f, hw, hw, generator=g), torch.randn(b * f, 50, c, generator=g)


@pytest.fixture(scope="module")
def small():
    from conftest import SPECS

    return build(small_config(SPECS))


# --------------------------------------------------------------------------- structure


def test_stage2_state_dict_matches_spec_exactly(specs_dir):
    with torch.device("meta"):
        model = UNet3DConditionModel.from_config(stage2_config(specs_dir))
    ours = state_dict_keys(model)
    spec = read_keys_tsv(os.path.join(specs_dir, "latentsync_unet3d_stage2.keys.tsv"))
    assert len(spec) == 1246
    assert ours == spec
    assert sum(p.numel() for p in model.parameters()) == 1_267_099_844
    assert sum(1 for n, _ in model.named_buffers() if n.endswith("pos_encoder.pe")) == 40
    assert model.config.max_frames() == 24


def test_positional_encoding_buffers_equal_sinusoid(small):
    pos = np.arange(24)[:, None]
    for dim in (32, 64, 320):
        ref = np.zeros((24, dim))
        ref[:, 0::2] = np.sin(pos / 10000 ** (np.arange(0, dim, 2) / dim))
        ref[:, 1::2] = np.cos(pos / 10000 ** (np.arange(0, dim, 2) / dim))
        assert np.abs(sinusoid_table(24, dim).numpy() - ref).max() < 1e-5
    pes = [(n, b) for n, b in small.named_buffers() if n.endswith("pos_encoder.pe")]
    assert len(pes) == 2 * (4 * 1 + 4 * 2)  # 2 attentions per module; 1 layer per down, 2 per up block
    for name, pe in pes:
        assert pe.shape[:2] == (1, 24)
        assert torch.equal(pe[0], sinusoid_table(24, pe.shape[-1])), name


def test_fresh_model_predicts_zero_and_randomised_does_not(specs_dir):
    x, audio = inputs()
    fresh = UNet3DConditionModel.from_config(small_config(specs_dir)).eval()
    with torch.no_grad():
        assert torch.count_nonzero(fresh(x, 500, audio)) == 0
        out = build(small_config(specs_dir))(x, 500, audio)
    assert out.shape == (1, 4, 3, 8, 8)
    assert torch.isfinite(out).all() and out.abs().mean() > 1e-2


def test_config_reading(tmp_path, specs_dir):
    import yaml

    path = tmp_path / "stage2.yaml"
    path.write_text(yaml.safe_dump({"data": {"num_frames": 16}, "model": stage2_config(specs_dir)}))
    cfg = read_unet_config(str(path))
    assert cfg.block_out_channels == (320, 640, 1280, 1280) and cfg.cross_attention_dim == 384
    with pytest.raises(ValueError, match="unknown keys.*not_a_key"):
        read_unet_config({**stage2_config(specs_dir), "not_a_key": 1})
    with pytest.raises(ValueError, match="motion_module_type"):
        read_unet_config({**stage2_config(specs_dir), "motion_module_type": "Conv"})


# --------------------------------------------------------------------------- loading


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def test_strict_load_wrapped_and_bare(tmp_path, small, specs_dir):
    cfg = small_config(specs_dir)
    sd = small.state_dict()
    x, audio = inputs()
    with torch.no_grad():
        ref = small(x, 500, audio)
    for i, obj in enumerate(({"state_dict": sd, "global_step": 7}, sd)):
        path = _save(obj, tmp_path / f"unet{i}.pt")
        model = load_latentsync_unet(path, cfg)
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
        assert list(model.state_dict()) == list(sd)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
        with torch.no_grad():
            assert torch.equal(model(x, 500, audio), ref)


def test_load_without_pe_buffers_and_in_bf16(tmp_path, small, specs_dir):
    sd = {k: v for k, v in small.state_dict().items() if not k.endswith("pos_encoder.pe")}
    model = load_latentsync_unet(_save({"state_dict": sd}, tmp_path / "u.pt"), small_config(specs_dir),
                                 dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.state_dict().values())
    for name, pe in model.named_buffers():
        assert torch.equal(pe[0], sinusoid_table(24, pe.shape[-1]).bfloat16()), name
    x, audio = inputs(f=2)
    with torch.no_grad():
        ref = small(x, 500, audio)
        out = model(x, 500, audio)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()) < 0.05


def test_load_rejects_mismatches_with_names(tmp_path, small, specs_dir):
    cfg = small_config(specs_dir)
    sd = dict(small.state_dict())
    del sd["mid_block.resnets.1.conv2.bias"]
    sd["up_blocks.0.extra.weight"] = torch.zeros(3)
    sd["conv_in.weight"] = torch.zeros(32, 9, 3, 3)
    path = _save({"state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(UNetCheckpointError) as err:
        load_latentsync_unet(path, cfg)
    msg = str(err.value)
    assert path in msg
    assert "missing 1: mid_block.resnets.1.conv2.bias" in msg
    assert "unexpected 1: up_blocks.0.extra.weight" in msg
    assert "wrong shape 1: conv_in.weight: file [32, 9, 3, 3] vs model [32, 13, 3, 3]" in msg


def test_load_rejects_wrong_positional_encoding(tmp_path, small, specs_dir):
    sd = dict(small.state_dict())
    key = next(k for k in sd if k.endswith("pos_encoder.pe"))
    sd[key] = sd[key] + 0.5
    with pytest.raises(UNetCheckpointError, match="not the fixed sinusoid.*" + key.replace(".", r"\.")):
        load_latentsync_unet(_save(sd, tmp_path / "pe.pt"), small_config(specs_dir))


def test_load_lists_are_truncated(tmp_path, small, specs_dir):
    sd = {k: v for i, (k, v) in enumerate(small.state_dict().items()) if i % 2}
    with pytest.raises(UNetCheckpointError, match=r"missing \d+: .*, \.\.\. \(\d+ more\)"):
        load_latentsync_unet(_save(sd, tmp_path / "half.pt"), small_config(specs_dir))


# --------------------------------------------------------------------------- inputs


def test_frame_limit_is_refused(small):
    x = torch.zeros(1, 13, 25, 8, 8)
    with pytest.raises(ValueError, match=r"25 frames.*length 24"):
        small(x, 500, torch.zeros(25, 50, 32))


def test_audio_layouts_and_timestep_forms_agree(small):
    x, audio = inputs(b=2, f=2)
    with torch.no_grad():
        ref = small(x, 500, audio)
        assert torch.equal(small(x, 500, audio.view(2, 2, 50, 32)), ref)
        for t in (500.0, torch.tensor(500), torch.tensor([500]), torch.tensor([500.0, 500.0])):
            assert torch.equal(small(x, t, audio), ref), t
        assert not torch.allclose(small(x, 499, audio), ref)
        assert not torch.allclose(small(x, 500, torch.zeros_like(audio)), ref)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        small(x, 500, audio[:3])


def test_batch_items_do_not_interact(small):
    x, audio = inputs(b=2, f=2)
    with torch.no_grad():
        both = small(x, 500, audio)
        second = small(x[1:], 500, audio[2:])
    torch.testing.assert_close(both[1:], second, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- frames


def test_frames_interact_only_through_motion_modules_with_per_frame_norms(specs_dir):
    model = build(small_config(specs_dir, use_inflated_groupnorm=True))
    x, audio = inputs(f=3)
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    with torch.no_grad():
        mixed = model(x, 500, audio)
        assert (model(x2, 500, audio)[:, :, 1] - mixed[:, :, 1]).abs().max() > 1e-4
        zero_motion_modules(model)
        joint = model(x, 500, audio)
        for i in range(3):
            alone = model(x[:, :, i : i + 1], 500, audio[i : i + 1])
            torch.testing.assert_close(joint[:, :, i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_default_norms_pool_statistics_over_frames(specs_dir):
    # Upstream applies nn.GroupNorm to [B, C, F, H, W]: resnet statistics span the clip, so
    # frames interact even without motion modules, yet order only matters through them.
    model = zero_motion_modules(build(small_config(specs_dir)))
    x, audio = inputs(f=3)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out = model(x, 500, audio)
        alone = model(x[:, :, :1], 500, audio[:1])
        assert (out[:, :, :1] - alone).abs().max() > 1e-4
        permuted = model(x[:, :, perm], 500, audio[perm])
        torch.testing.assert_close(permuted, out[:, :, perm], rtol=1e-5, atol=1e-5)
        randomise_unet3d(model, seed=3)  # motion modules back on: the positional encoding breaks symmetry
        out = model(x, 500, audio)
        permuted = model(x[:, :, perm], 500, audio[perm])
        assert (permuted - out[:, :, perm]).abs().max() > 1e-4


# --------------------------------------------------------------------------- DeepCache


def test_deepcache_shallow_step_reuses_the_deep_feature(small):
    x, audio = inputs(b=2, f=2)
    with torch.no_grad():
        full, cache = small.forward_full(x, 500, audio)
        assert isinstance(cache, DeepCacheState) and cache.feature.shape == (4, 32, 8, 8)
        assert torch.equal(full, small(x, 500, audio))
        assert torch.equal(small.forward_shallow(x, 500, audio, cache), full)

        x2, audio2 = inputs(b=2, f=2, seed=5)
        shallow = small.forward_shallow(x2, 480, audio2, cache)
        assert (shallow - full).abs().max() > 1e-3  # it does use the new inputs ...
        exact = small(x2, 480, audio2)
        assert (shallow - exact).abs().max() > 1e-4  # ... but not the recomputed deep feature
        _, other = small.forward_full(x2, 480, audio2)
        assert torch.equal(small.forward_shallow(x2, 480, audio2, other), exact)

        with pytest.raises(ValueError, match="DeepCache feature"):
            small.forward_shallow(x[:1], 500, audio[:2], cache)


def test_deepcache_schedule():
    full = [i for i in range(20) if deepcache_is_full_step(i, 3)]
    assert full == [0, 3, 6, 9, 12, 15, 18]
    assert all(deepcache_is_full_step(i, 1) for i in range(5))


def test_unreadable_checkpoint_names_the_file(tmp_path, specs_dir):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UNetCheckpointError, match="junk.pt"):
        load_latentsync_unet(str(path), small_config(specs_dir))
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_latentsync_unet(str(tmp_path / "absent.pt"), small_config(specs_dir))


def test_odd_latent_size_keeps_shape(small):
    x, audio = inputs(f=2, hw=12)  # 12 -> 6 -> 3 -> 2: upsampling must follow the skip sizes
    with torch.no_grad():
        out = small(x, 500, audio)
    assert out.shape == (1, 4, 2, 12, 12) and torch.isfinite(out).all()
