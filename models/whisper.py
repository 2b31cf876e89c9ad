"""Whisper audio encoder (transformers ``WhisperEncoder``) and its log-mel input.

Both lip-sync models condition on whisper-tiny encoder states, 50 steps per second:

- MuseTalk v1.5 loads an HF folder (``openai/whisper-tiny``) and stacks every hidden state
  the transformers encoder reports: the embedding output, the outputs of layers 1..L-1 and
  the output of layer L *after* the final LayerNorm.
- LatentSync loads OpenAI's ``tiny.pt`` and stacks the same L+1 states but takes the last
  one *before* the final LayerNorm (``ln_post``).

``WhisperAudioEncoder.hidden_states`` returns either stack from one forward pass.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from lipgraph.models.checkpoint import check_state_dict, load_checkpoint, read_state_dict

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # one encoder window: 30 s
WINDOW_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 3000 mel frames
WINDOW_STEPS = WINDOW_FRAMES // 2  # 1500 encoder steps (conv2 has stride 2)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# OpenAI's ModelDimensions of tiny.pt; every OpenAI checkpoint's "dims" has these keys.
WHISPER_TINY_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6,
                     "n_audio_layer": 4, "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 384,
                     "n_text_head": 6, "n_text_layer": 4}


class WhisperCheckpointError(ValueError):
    """A whisper checkpoint does not match the encoder it should fill."""


# ----------------------------------------------------------------------------- log-mel


@functools.lru_cache(maxsize=None)
def _mel_filters(convention: str) -> torch.Tensor:
    if convention == "transformers":
        from transformers.audio_utils import mel_filter_bank

        bank = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=N_MELS, min_frequency=0.0,
                               max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                               mel_scale="slaney")
        return torch.from_numpy(bank.T.astype(np.float32)).contiguous()
    if convention == "openai":
        import librosa

        # OpenAI's mel_filters.npz asset was saved from exactly this call (float32).
        bank = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)
        return torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    raise ValueError(f"unknown mel filter convention {convention!r}: expected 'transformers' or 'openai'")


def mel_filters(convention: str = "transformers") -> torch.Tensor:
    """Slaney mel filter bank [80, 201] (float32).

    ``"transformers"``: WhisperFeatureExtractor's bank (MuseTalk); ``"openai"``: the bank of
    OpenAI's whisper package (LatentSync). They differ by about one float32 ulp.
    """
    return _mel_filters(convention).clone()


def log10_mel_spectrum(signal: torch.Tensor, convention: str = "transformers") -> torch.Tensor:
    """log10 mel power [80, F] of every full 400-sample frame (hop 160) of ``signal``.

    ``signal`` must already carry any edge padding (Whisper reflect-pads 200 samples each side);
    F = (len(signal) - 400) // 160 + 1.
    """
    signal = signal.to(torch.float32)
    window = torch.hann_window(N_FFT, device=signal.device)
    spec = torch.stft(signal, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
    power = spec.abs() ** 2
    mel = _mel_filters(convention).to(signal.device) @ power
    return torch.clamp(mel, min=1e-10).log10()


def normalize_log_mel(log_spec: torch.Tensor, peak: float | torch.Tensor) -> torch.Tensor:
    """Whisper's dynamic-range clamp and scaling: max(x, peak - 8), then (x + 4) / 4."""
    floor = torch.as_tensor(peak, dtype=log_spec.dtype, device=log_spec.device) - 8.0
    return (torch.maximum(log_spec, floor) + 4.0) / 4.0


def log_mel(pcm_16k: np.ndarray) -> np.ndarray:
    """Log-mel input [80, 3000] (float32) for one window of at most 30 s of 16 kHz mono audio.

    Same as transformers' WhisperFeatureExtractor: zero-pad the audio to 30 s, centred STFT
    (reflect padding), drop the last frame, clamp 8 decades below this window's peak, scale.
    """
    pcm = np.asarray(pcm_16k, dtype=np.float32)
    if pcm.ndim != 1:
        raise ValueError(f"log_mel expects mono audio [samples], got shape {pcm.shape}")
    if pcm.shape[0] > WINDOW_SAMPLES:
        raise ValueError(f"log_mel takes at most {WINDOW_SAMPLES} samples (30 s), got {pcm.shape[0]}")
    x = torch.from_numpy(pcm)
    x = F.pad(x, (0, WINDOW_SAMPLES - x.shape[0]))
    x = F.pad(x[None, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[0, 0]
    spec = log10_mel_spectrum(x, "transformers")[:, :WINDOW_FRAMES]
    return normalize_log_mel(spec, spec.max()).numpy()


# ----------------------------------------------------------------------------- encoder


class WhisperAudioEncoder(nn.Module):
    """transformers ``WhisperEncoder`` plus the hidden-state stacks the lip-sync models use."""

    num_layers = property(lambda self: len(self.encoder.layers))
    d_model = property(lambda self: self.encoder.config.d_model)
    device = property(lambda self: self.encoder.conv1.weight.device)
    dtype = property(lambda self: self.encoder.conv1.weight.dtype)

    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.config = config
        self.encoder = WhisperEncoder(config)

    @torch.no_grad()
    def hidden_states(self, mel: torch.Tensor, final_layer_norm: bool = True) -> torch.Tensor:
        """Stacked encoder states [B, 1500, L+1, d] for log-mel input [B, 80, 3000].

        Entry 0 is the embedding output (convs + positions), entry k the output of layer k.
        ``final_layer_norm=True`` (MuseTalk) gives the last entry after the final LayerNorm,
        as transformers reports it; ``False`` (LatentSync) gives it before.
        """
        if mel.dim() == 2:
            mel = mel[None]
        expected = (self.encoder.config.num_mel_bins, self.encoder.config.max_source_positions * 2)
        if mel.dim() != 3 or tuple(mel.shape[1:]) != expected:
            raise ValueError(f"expected log-mel [B, {expected[0]}, {expected[1]}], got {tuple(mel.shape)}")
        mel = mel.to(device=self.device, dtype=self.dtype)

        captured: list[torch.Tensor] = []
        # The state before the final LayerNorm is the LayerNorm's input.
        hook = self.encoder.layer_norm.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            out = self.encoder(mel, output_hidden_states=True, return_dict=True)
        finally:
            hook.remove()
        states = list(out.hidden_states)
        if len(states) != self.num_layers + 1:
            raise RuntimeError(f"encoder reported {len(states)} hidden states, "
                               f"expected {self.num_layers + 1}")
        if not final_layer_norm:
            states[-1] = captured[0]
        return torch.stack(states, dim=2)

    def forward(self, mel: torch.Tensor, final_layer_norm: bool = True) -> torch.Tensor:
        return self.hidden_states(mel, final_layer_norm)


# ----------------------------------------------------------------------------- key names

# OpenAI encoder block parts -> transformers WhisperEncoder names.
_BLOCK_PARTS = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}
_TOP_PARTS = {"conv1": "conv1", "conv2": "conv2", "ln_post": "layer_norm"}
# Full key names, "{}" standing for the block index.
_OPENAI_TO_HF = {
    "encoder.positional_embedding": "embed_positions.weight",
    **{f"encoder.blocks.{{}}.{o}.{p}": f"layers.{{}}.{h}.{p}"
       for o, h in _BLOCK_PARTS.items() for p in ("weight", "bias")},
    **{f"encoder.{o}.{p}": f"{h}.{p}" for o, h in _TOP_PARTS.items() for p in ("weight", "bias")},
}
_HF_TO_OPENAI = {v: k for k, v in _OPENAI_TO_HF.items()}


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    block = re.search(r"\.(\d+)\.", key)      # the first ".N." of a key is its block index
    if block is None:
        return table.get(key)
    name = table.get(f"{key[:block.start()]}.{{}}.{key[block.end():]}")
    return name and name.format(block[1])


def openai_key_to_hf(key: str) -> str | None:
    """``encoder.blocks.0.attn.query.weight`` -> ``layers.0.self_attn.q_proj.weight``; None if unknown."""
    return _rename(key, _OPENAI_TO_HF)


def hf_key_to_openai(key: str) -> str | None:
    """Inverse of :func:`openai_key_to_hf`."""
    return _rename(key, _HF_TO_OPENAI)


# ----------------------------------------------------------------------------- loading


def config_from_openai_dims(dims: Mapping[str, int]) -> WhisperConfig:
    """transformers config for an OpenAI ``ModelDimensions`` dict (MLP width is 4x, GELU)."""
    # transformers' default special-token ids (decoder only) must lie inside the vocabulary.
    tokens = {"pad_token_id": 50256, "bos_token_id": 50256, "eos_token_id": 50256,
              "decoder_start_token_id": 50257}
    tokens = {k: min(v, dims["n_vocab"] - 1) for k, v in tokens.items()}
    return WhisperConfig(
        **tokens, num_mel_bins=dims["n_mels"], max_source_positions=dims["n_audio_ctx"],
        d_model=dims["n_audio_state"], encoder_attention_heads=dims["n_audio_head"],
        encoder_layers=dims["n_audio_layer"], encoder_ffn_dim=4 * dims["n_audio_state"],
        vocab_size=dims["n_vocab"], max_target_positions=dims["n_text_ctx"],
        decoder_attention_heads=dims["n_text_head"], decoder_layers=dims["n_text_layer"],
        decoder_ffn_dim=4 * dims["n_text_state"], activation_function="gelu")


def _read_hf_folder(path: str, weights: str | None = None
                    ) -> tuple[WhisperConfig, dict[str, torch.Tensor], str]:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise WhisperCheckpointError(f"{path}: whisper folder has no config.json")
    with open(config_path, encoding="utf-8") as f:
        raw = json.load(f)
    if raw.get("model_type", "whisper") != "whisper":
        raise WhisperCheckpointError(f"{config_path}: model_type is {raw.get('model_type')!r}, "
                                     "expected 'whisper'")
    config = WhisperConfig.from_dict(raw)

    for name in (weights,) if weights else HF_WEIGHT_FILES:
        weights_path = os.path.join(path, name)
        if os.path.isfile(weights_path):
            return config, read_state_dict(weights_path, "whisper", WhisperCheckpointError), weights_path
    raise WhisperCheckpointError(f"{path}: no weights file, expected one of {', '.join(HF_WEIGHT_FILES)}")


def _hf_encoder_part(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Encoder entries with their prefix removed, and that prefix."""
    # WhisperForConditionalGeneration saves "model.encoder.*", WhisperModel "encoder.*",
    # a bare WhisperEncoder no prefix.
    for prefix in ("model.encoder.", "encoder.", ""):
        if prefix + "conv1.weight" in state:
            if not prefix:
                return dict(state), prefix
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, prefix
    raise WhisperCheckpointError(f"{source}: no whisper encoder found "
                                 "(no '[model.]encoder.conv1.weight' key)")


def _read_openai_file(path: str) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WhisperCheckpointError(f"{path}: expected an OpenAI whisper checkpoint "
                                     f"{{'dims': ..., 'model_state_dict': ...}}, got {keys}")
    missing_dims = [k for k in WHISPER_TINY_DIMS if k not in ckpt["dims"]]
    if missing_dims:
        raise WhisperCheckpointError(f"{path}: 'dims' lacks {missing_dims}")
    config = config_from_openai_dims(ckpt["dims"])

    state = ckpt["model_state_dict"]
    if not isinstance(state, dict):
        raise WhisperCheckpointError(f"{path}: 'model_state_dict' is a {type(state).__name__}, "
                                     "expected a dict")
    # Decoder entries are not used; unknown encoder names stay as they are and fail the load.
    mapped = {openai_key_to_hf(k) or k: v for k, v in state.items() if k.startswith("encoder.")}
    return config, mapped


def _check_and_load(module: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                    file_key: Callable[[str], str]) -> None:
    """Strict load; errors name keys as the file spells them (``file_key`` maps them back)."""
    expected = module.state_dict()
    check_state_dict({file_key(k): tuple(v.shape) for k, v in expected.items()},
                     {file_key(k): v for k, v in state.items()}, source, "whisper encoder")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_whisper_encoder(path: str, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> WhisperAudioEncoder:
    """Load a whisper encoder from an HF folder or an OpenAI ``*.pt`` checkpoint (e.g. ``tiny.pt``).

    ``path`` may also name the weights file inside an HF folder.
    Only the encoder is built; decoder weights are ignored. Every encoder parameter must be
    present with the right shape, else :class:`WhisperCheckpointError`.
    """
    path = os.fspath(path)
    if os.path.isdir(path) or (os.path.isfile(path) and os.path.basename(path) in HF_WEIGHT_FILES):
        if os.path.isdir(path):
            folder, weights = path, None
        else:
            folder, weights = os.path.dirname(path) or ".", os.path.basename(path)
        config, state, source = _read_hf_folder(folder, weights)
        encoder_state, prefix = _hf_encoder_part(state, source)
        file_key = lambda k: prefix + k  # noqa: E731
    elif os.path.isfile(path):
        config, encoder_state = _read_openai_file(path)
        source = path
        file_key = lambda k: hf_key_to_openai(k) or k  # noqa: E731
    else:
        raise FileNotFoundError(f"{path}: no such whisper folder or checkpoint file")

    model = WhisperAudioEncoder(config)
    _check_and_load(model.encoder, encoder_state, source, file_key)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
