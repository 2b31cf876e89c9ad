"""One dub per speaker: `--dub ID=AUDIO` (repeatable, or a YAML file mapping ids to audio
files) gives each chosen face track its own audio, and the output's sound is their mix.

The mix is made once per set of dub files (named by their content) under the lipgraph cache
(`~/.cache/lipgraph/dub-mixes`, or `$LIPGRAPH_CACHE`; the 8 most recent are kept), so a
resumed run finds the very same soundtrack. The dubs are summed at the first dub's sample
rate, in stereo when any dub is stereo (else mono); a sum that would clip is scaled down as a
whole (never clipped).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

KEEP = 8           # mixes kept in the cache


def parse_dubs(values) -> dict[int, str]:
    """{track id: audio path} from "ID=PATH" strings, a mapping, or one YAML file holding a
    mapping; ValueError naming the form."""
    if isinstance(values, str):
        values = [values]
    if isinstance(values, (list, tuple)) and len(values) == 1 and "=" not in str(values[0]):
        values = _read_mapping(str(values[0]))
    pairs = values.items() if isinstance(values, dict) else (_split(v) for v in values or ())
    dubs: dict[int, str] = {}
    for key, path in pairs:
        try:
            tid = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"--dub: expected ID=AUDIO with a track id from "
                             f"python -m lipgraph.tools.faces, got {key!r}") from None
        if tid < 1:
            raise ValueError(f"--dub: track ids start at 1, got {tid}")
        if tid in dubs:
            raise ValueError(f"--dub: track {tid} is given two dubs")
        dubs[tid] = os.path.expanduser(str(path))
    return dubs


def _split(value) -> tuple[str, str]:
    key, sep, path = str(value).partition("=")
    if not sep or not path:
        raise ValueError(f"--dub: expected ID=AUDIO (or a YAML file of id: audio), got {value!r}")
    return key.strip(), path.strip()


def _read_mapping(path: str) -> dict:
    import yaml
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ValueError(f"--dub: cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"--dub: {path} is not YAML: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"--dub: {path} must map track ids to audio files (2: dub_a.wav)")
    base = os.path.dirname(os.path.abspath(path))
    return {k: os.path.join(base, os.path.expanduser(str(v))) for k, v in data.items()}


def dub_values(dubs: dict[int, str]) -> list[str]:
    """The audio stage's `dubs` param: "ID=PATH" strings with absolute paths."""
    return [f"{tid}={os.path.abspath(path)}" for tid, path in dubs.items()]


def mixed_soundtrack(paths: list[str], folder: str | None = None) -> str:
    """The mix of the dubs, made once (see the module's docstring); its path."""
    from lipgraph.cache import cache_folder
    from lipgraph.media.identity import file_identity
    from lipgraph.media.partial import written_aside
    folder = folder or cache_folder("dub-mixes")
    key = json.dumps([file_identity(p)["sha256"] for p in paths])
    path = os.path.join(folder, hashlib.sha256(key.encode()).hexdigest()[:24] + ".wav")
    if not os.path.isfile(path):
        os.makedirs(folder, exist_ok=True)
        with written_aside(path) as tmp:
            write_mix(paths, tmp)
    os.utime(path)                      # most recently used: kept longest
    _prune(folder)
    return path


def _prune(folder: str) -> None:
    mixes = sorted((os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".wav")),
                   key=os.path.getmtime, reverse=True)
    for old in mixes[KEEP:]:
        try:
            os.remove(old)
        except OSError:
            pass          # in use by another run: the next one prunes it


def write_mix(paths: list[str], out: str) -> None:
    """Sum the dubs (the first dub's rate) into a 16-bit WAV: two streaming passes,
    the first finds the peak so the second can scale a sum that would clip."""
    import av

    from lipgraph.media.audio import probe_audio
    infos = [probe_audio(p) for p in paths]
    rate = int(infos[0].sample_rate)
    channels = 2 if any(i.channels > 1 for i in infos) else 1
    layout = "stereo" if channels == 2 else "mono"
    peak = max((float(np.abs(block).max()) for block in _summed(paths, rate, channels) if block.size),
               default=0.0)
    gain = 1.0 / peak if peak > 1.0 else 1.0
    with av.open(out, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout=layout)
        for block in _summed(paths, rate, channels):
            pcm = np.clip(np.round(block * gain * 32767.0), -32768, 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T).reshape(1, -1),
                                               format="s16", layout=layout)
            frame.sample_rate = rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _summed(paths: list[str], rate: int, channels: int, block: int = 1 << 15):
    """Blocks [channels, n] of the sum of the dubs (a shorter dub adds silence after its end)."""
    from lipgraph.media.audio import Samples, iter_audio_blocks
    readers = [Samples(iter_audio_blocks(p, rate, channels=channels), channels) for p in paths]
    while True:
        parts = [r.take(block) for r in readers]
        n = max(p.shape[1] for p in parts)
        if n == 0:
            return
        total = np.zeros((channels, n), np.float32)
        for p in parts:
            total[:, :p.shape[1]] += p
        yield total
