import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from lipgraph.models.checkpoint import StateDictMismatchError
from lipgraph.models.whisper import (
    WINDOW_SAMPLES,
    WhisperAudioEncoder,
    WhisperCheckpointError,
    config_from_openai_dims,
    hf_key_to_openai,
    load_whisper_encoder,
    log_mel,
    openai_key_to_hf,
)

# Small random whisper: d 64, 2 encoder layers (3 hidden states), heads of 32.
SMALL_DIMS = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
    n_vocab=100, n_text_ctx=32, n_text_state=64, n_text_head=2, n_text_layer=1,
)
TINY_DIMS = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
    n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4,
)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    # Fresh modules have zero biases and unit LayerNorms: a swapped bias would go unseen.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _small_encoder(seed: int = 0) -> WhisperEncoder:
    enc = WhisperEncoder(config_from_openai_dims(SMALL_DIMS))
    _randomize(enc, seed)
    return enc.eval()


def _mel(batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 80, 3000, generator=torch.Generator().manual_seed(seed))


def _manual_states(enc: WhisperEncoder, mel: torch.Tensor):
    """Encoder states from the modules themselves: [emb, layer 1..L] and the final LayerNorm."""
    with torch.no_grad():
        x = F.gelu(enc.conv1(mel))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1) + enc.embed_positions.weight
        states = [x]
        for layer in enc.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
            states.append(x)
        return states, enc.layer_norm(x)


def _openai_forward(sd: dict, dims: dict, mel: torch.Tensor):
    """OpenAI-format encoder written from the whisper paper's block: pre-LN attention + MLP."""
    d, heads = dims["n_audio_state"], dims["n_audio_head"]
    sd = {k: v.float() for k, v in sd.items()}
    x = F.gelu(F.conv1d(mel, sd["encoder.conv1.weight"], sd["encoder.conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, sd["encoder.conv2.weight"], sd["encoder.conv2.bias"], stride=2, padding=1))
    x = x.permute(0, 2, 1) + sd["encoder.positional_embedding"]
    states = [x]
    for b in range(dims["n_audio_layer"]):
        p = f"encoder.blocks.{b}."
        h = F.layer_norm(x, (d,), sd[p + "attn_ln.weight"], sd[p + "attn_ln.bias"])
        q = F.linear(h, sd[p + "attn.query.weight"], sd[p + "attn.query.bias"])
        k = F.linear(h, sd[p + "attn.key.weight"])
        v = F.linear(h, sd[p + "attn.value.weight"], sd[p + "attn.value.bias"])
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        o = (att @ split(v)).transpose(1, 2).reshape(x.shape)
        x = x + F.linear(o, sd[p + "attn.out.weight"], sd[p + "attn.out.bias"])
        h = F.layer_norm(x, (d,), sd[p + "mlp_ln.weight"], sd[p + "mlp_ln.bias"])
        x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])),
                         sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
        states.append(x)
    return states, F.layer_norm(x, (d,), sd["encoder.ln_post.weight"], sd["encoder.ln_post.bias"])


def _openai_checkpoint(enc: WhisperEncoder) -> dict:
    sd = {hf_key_to_openai(k): v.clone() for k, v in enc.state_dict().items()}
    assert None not in sd
    # decoder weights ride along in the real file and must be ignored
    sd["decoder.token_embedding.weight"] = torch.randn(SMALL_DIMS["n_vocab"], 64)
    sd["decoder.blocks.0.cross_attn.query.weight"] = torch.randn(64, 64)
    return {"dims": dict(SMALL_DIMS), "model_state_dict": sd}


# ----------------------------------------------------------------------------- key names


def test_openai_key_names_map_to_transformers_names():
    pairs = {
        "encoder.conv1.weight": "conv1.weight",
        "encoder.conv2.bias": "conv2.bias",
        "encoder.positional_embedding": "embed_positions.weight",
        "encoder.blocks.3.attn.query.weight": "layers.3.self_attn.q_proj.weight",
        "encoder.blocks.0.attn.key.weight": "layers.0.self_attn.k_proj.weight",
        "encoder.blocks.1.attn.value.bias": "layers.1.self_attn.v_proj.bias",
        "encoder.blocks.2.attn.out.weight": "layers.2.self_attn.out_proj.weight",
        "encoder.blocks.0.attn_ln.bias": "layers.0.self_attn_layer_norm.bias",
        "encoder.blocks.0.mlp.0.weight": "layers.0.fc1.weight",
        "encoder.blocks.0.mlp.2.bias": "layers.0.fc2.bias",
        "encoder.blocks.0.mlp_ln.weight": "layers.0.final_layer_norm.weight",
        "encoder.ln_post.weight": "layer_norm.weight",
    }
    for openai, hf in pairs.items():
        assert openai_key_to_hf(openai) == hf
        assert hf_key_to_openai(hf) == openai
    assert openai_key_to_hf("encoder.blocks.0.attn.rotary.weight") is None
    assert hf_key_to_openai("layers.0.self_attn.rotary.weight") is None


def test_every_whisper_tiny_encoder_key_round_trips():
    with torch.device("meta"):
        enc = WhisperEncoder(config_from_openai_dims(TINY_DIMS))
    keys = list(enc.state_dict())
    # 2 convs x 2 + positions + 4 blocks x 15 + final LayerNorm x 2 (k_proj has no bias)
    assert len(keys) == 4 + 1 + 4 * 15 + 2
    openai = [hf_key_to_openai(k) for k in keys]
    assert None not in openai and len(set(openai)) == len(keys)
    assert all(k.startswith("encoder.") for k in openai)
    assert [openai_key_to_hf(k) for k in openai] == keys
    assert sum(p.numel() for p in enc.parameters()) == 8_208_384  # whisper-tiny encoder


# ----------------------------------------------------------------------------- hidden states


def test_hidden_states_follow_both_upstream_conventions():
    model = WhisperAudioEncoder(config_from_openai_dims(SMALL_DIMS))
    _randomize(model, 3)
    model.eval()
    mel = _mel(2)
    states, final = _manual_states(model.encoder, mel)

    musetalk = model.hidden_states(mel, final_layer_norm=True)
    latentsync = model.hidden_states(mel, final_layer_norm=False)
    assert musetalk.shape == latentsync.shape == (2, 1500, 3, 64)
    for k in range(2):
        torch.testing.assert_close(musetalk[:, :, k], states[k], rtol=0, atol=0)
        torch.testing.assert_close(latentsync[:, :, k], states[k], rtol=0, atol=0)
    torch.testing.assert_close(musetalk[:, :, 2], final, rtol=0, atol=0)
    torch.testing.assert_close(latentsync[:, :, 2], states[2], rtol=0, atol=0)
    assert (latentsync[:, :, 2] - musetalk[:, :, 2]).abs().max() > 0.1

    # MuseTalk stacks transformers' own output_hidden_states: check we give exactly that.
    with torch.no_grad():
        reported = model.encoder(mel, output_hidden_states=True).hidden_states
    torch.testing.assert_close(musetalk, torch.stack(reported, dim=2), rtol=0, atol=0)

    with pytest.raises(ValueError, match="80, 3000"):
        model.hidden_states(torch.zeros(1, 80, 2999))


# ----------------------------------------------------------------------------- loading


def _hf_model(seed: int = 0) -> WhisperForConditionalGeneration:
    config = WhisperConfig(
        d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=256,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=128, vocab_size=100,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
    )
    model = WhisperForConditionalGeneration(config)
    _randomize(model.model.encoder, seed)
    return model.eval()


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_load_hf_folder(tmp_path, weights):
    model = _hf_model(5)
    folder = tmp_path / "whisper"
    if weights == "model.safetensors":
        model.save_pretrained(folder)
    else:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    WhisperFeatureExtractor().save_pretrained(folder)
    assert (folder / weights).is_file()

    loaded = load_whisper_encoder(str(folder))
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    mel = _mel()
    states, final = _manual_states(model.model.encoder, mel)
    got = loaded.hidden_states(mel)
    for k in range(2):
        torch.testing.assert_close(got[:, :, k], states[k], rtol=0, atol=0)
    torch.testing.assert_close(got[:, :, 2], final, rtol=0, atol=0)


def test_load_hf_folder_dtype(tmp_path):
    model = _hf_model(6)
    model.save_pretrained(tmp_path)
    loaded = load_whisper_encoder(tmp_path, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    out = loaded.hidden_states(_mel())
    assert out.dtype == torch.float64
    ref = load_whisper_encoder(tmp_path).hidden_states(_mel())
    torch.testing.assert_close(out.float(), ref, rtol=1e-4, atol=1e-4)


def test_load_openai_checkpoint(tmp_path):
    enc = _small_encoder(7)
    ckpt = _openai_checkpoint(enc)
    path = tmp_path / "tiny.pt"
    torch.save(ckpt, path)

    loaded = load_whisper_encoder(str(path))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    mel = _mel()
    states, final = _manual_states(enc, mel)
    pre = loaded.hidden_states(mel, final_layer_norm=False)
    post = loaded.hidden_states(mel, final_layer_norm=True)
    for k in range(3):
        torch.testing.assert_close(pre[:, :, k], states[k], rtol=0, atol=0)
    torch.testing.assert_close(post[:, :, 2], final, rtol=0, atol=0)

    # The mapping means what the OpenAI names say: compare with an OpenAI-semantics forward.
    ref_states, ref_final = _openai_forward(ckpt["model_state_dict"], SMALL_DIMS, mel)
    for k in range(3):
        torch.testing.assert_close(pre[:, :, k], ref_states[k], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(post[:, :, 2], ref_final, rtol=1e-4, atol=1e-4)


def test_load_fp16_openai_checkpoint(tmp_path):
    # OpenAI ships tiny.pt in float16.
    ckpt = _openai_checkpoint(_small_encoder(8))
    ckpt["model_state_dict"] = {k: v.half() for k, v in ckpt["model_state_dict"].items()}
    torch.save(ckpt, tmp_path / "tiny.pt")
    loaded = load_whisper_encoder(tmp_path / "tiny.pt")
    assert loaded.dtype == torch.float32
    mel = _mel()
    ref_states, _ = _openai_forward(ckpt["model_state_dict"], SMALL_DIMS, mel)
    torch.testing.assert_close(loaded.hidden_states(mel, False)[:, :, 2], ref_states[2], rtol=1e-4, atol=1e-4)


def _expect_error(path, *needles, kind=StateDictMismatchError):
    # format errors are WhisperCheckpointError, key mismatches the project-wide StateDictMismatchError
    with pytest.raises(kind) as info:
        load_whisper_encoder(str(path))
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message


def test_openai_checkpoint_errors(tmp_path):
    path = tmp_path / "tiny.pt"

    ckpt = _openai_checkpoint(_small_encoder())
    del ckpt["model_state_dict"]["encoder.blocks.1.mlp_ln.bias"]
    torch.save(ckpt, path)
    _expect_error(path, "missing", "encoder.blocks.1.mlp_ln.bias")

    ckpt = _openai_checkpoint(_small_encoder())
    ckpt["model_state_dict"]["encoder.blocks.0.attn.rotary.weight"] = torch.zeros(3)
    torch.save(ckpt, path)
    _expect_error(path, "unexpected", "encoder.blocks.0.attn.rotary.weight")

    ckpt = _openai_checkpoint(_small_encoder())
    ckpt["model_state_dict"]["encoder.blocks.2.attn.query.weight"] = torch.zeros(64, 64)
    torch.save(ckpt, path)
    _expect_error(path, "unexpected", "encoder.blocks.2.attn.query.weight")

    ckpt = _openai_checkpoint(_small_encoder())
    ckpt["model_state_dict"]["encoder.conv1.weight"] = torch.zeros(64, 80, 5)
    torch.save(ckpt, path)
    _expect_error(path, "wrong shape", "encoder.conv1.weight", "[64, 80, 5]", "[64, 80, 3]")

    ckpt = _openai_checkpoint(_small_encoder())
    ckpt["dims"]["n_audio_layer"] = 3
    torch.save(ckpt, path)
    _expect_error(path, "missing", "encoder.blocks.2.mlp.0.weight")

    torch.save({"state_dict": {}}, path)
    _expect_error(path, "dims", "model_state_dict", kind=WhisperCheckpointError)

    ckpt = _openai_checkpoint(_small_encoder())
    del ckpt["dims"]["n_mels"]
    torch.save(ckpt, path)
    _expect_error(path, "n_mels", kind=WhisperCheckpointError)


def test_hf_folder_errors(tmp_path):
    model = _hf_model()
    good = model.state_dict()

    def folder_with(state, name):
        d = tmp_path / name
        model.config.save_pretrained(d)
        torch.save(state, d / "pytorch_model.bin")
        return d

    bad = {k: v for k, v in good.items() if k != "model.encoder.layers.0.self_attn.v_proj.bias"}
    _expect_error(folder_with(bad, "missing"), "missing", "model.encoder.layers.0.self_attn.v_proj.bias")

    bad = dict(good)
    bad["model.encoder.layers.0.self_attn.k_proj.bias"] = torch.zeros(64)
    # the weights file itself may be given too
    weights = folder_with(bad, "unexpected") / "pytorch_model.bin"
    _expect_error(weights, "unexpected", "model.encoder.layers.0.self_attn.k_proj.bias")

    bad = dict(good)
    bad["model.encoder.embed_positions.weight"] = torch.zeros(1000, 64)
    _expect_error(folder_with(bad, "shape"), "wrong shape", "model.encoder.embed_positions.weight")

    bad = {k: v for k, v in good.items() if not k.startswith("model.encoder.")}
    _expect_error(folder_with(bad, "decoder_only"), "no whisper encoder", kind=WhisperCheckpointError)

    empty = tmp_path / "no_weights"
    model.config.save_pretrained(empty)
    _expect_error(empty, "model.safetensors", "pytorch_model.bin", kind=WhisperCheckpointError)

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    _expect_error(no_config, "config.json", kind=WhisperCheckpointError)
    with pytest.raises(FileNotFoundError, match="missing_folder"):
        load_whisper_encoder(str(tmp_path / "missing_folder"))


# ----------------------------------------------------------------------------- log-mel


@pytest.mark.parametrize("seconds", [0.05, 7.3, 30.0])
def test_log_mel_matches_whisper_feature_extractor(seconds):
    rng = np.random.default_rng(int(seconds * 100))
    n = int(round(seconds * 16000))
    t = np.arange(n) / 16000
    pcm = (0.4 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    ours = log_mel(pcm)
    theirs = WhisperFeatureExtractor()(pcm, sampling_rate=16000, return_tensors="np").input_features[0]
    assert ours.shape == (80, 3000) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    # the zero-padded tail sits at the 8-decade floor
    floor = ours.max() - 2.0  # (peak - 8 + 4) / 4 with ours.max() = (peak + 4) / 4
    if seconds < 29:
        np.testing.assert_allclose(ours[:, -10:], floor, atol=1e-5)


def test_log_mel_rejects_bad_input():
    with pytest.raises(ValueError, match="480000"):
        log_mel(np.zeros(WINDOW_SAMPLES + 1, np.float32))
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 1000), np.float32))


def test_unreadable_checkpoint_named(tmp_path):
    path = tmp_path / "tiny.pt"
    path.write_bytes(b"not a checkpoint")
    _expect_error(path, "could not read", kind=ValueError)
