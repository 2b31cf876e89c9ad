"""Where every model file lives, where it comes from, and how to find it.

One registry (`WEIGHT_FILES`) describes each file: its place in the weights folder (the layout a
MuseTalk checkout's `models/` folder already has, plus the LatentSync files), its Hugging Face
source, its published size, and which backends need it. `resolve_weights` finds files in a
weights folder, then in the Hugging Face hub cache and the torch hub cache, and raises one
`MissingWeightsError` naming everything that is missing and how to get it.

The loaders' shared strictness check (`check_state_dict`) lives here too, so every model reports
key mismatches the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Container, Iterable, Mapping

HF_URL = "https://huggingface.co/{repo}/resolve/main/{filename}"
DOWNLOAD_COMMAND = "python -m lipgraph.tools.download_weights --dest {dest} --set {set}"

BACKENDS = ("musetalk", "latentsync-1.5", "latentsync-1.6")
# Download sets: each backend by name, "latentsync" = the current upstream release (1.6).
DOWNLOAD_SETS = {
    "musetalk": ("musetalk",),
    "latentsync": ("latentsync-1.6",),
    "latentsync-1.5": ("latentsync-1.5",),
    "latentsync-1.6": ("latentsync-1.6",),
    "all": BACKENDS,
}


@dataclass(frozen=True)
class WeightFile:
    """One model file: where it goes, where it comes from, who needs it."""

    name: str
    purpose: str
    # Places relative to the weights folder, most preferred first; downloads go to paths[0].
    paths: tuple[str, ...]
    hf_repo: str | None = None
    hf_filename: str | None = None
    # Published sizes in bytes, by file name (a file may exist in two formats).
    sizes: tuple[tuple[str, int], ...] = ()
    sha256: str | None = None
    # Where the file originally comes from, when that is not the Hugging Face source.
    url: str | None = None
    required_for: tuple[str, ...] = ()
    optional_for: tuple[str, ...] = ()
    # Places that may hold a different variant under the same name (LatentSync 1.5 and 1.6 both
    # ship `latentsync_unet.pt`): used only when the file has exactly this variant's size.
    shared_paths: tuple[str, ...] = ()
    # File name inside `torch.hub.get_dir()/checkpoints/`, for files torch hub users already have.
    torch_hub_name: str | None = None
    # Other absolute places (with ~ expanded) where a tool may have cached the file.
    extra_locations: tuple[str, ...] = ()
    # More (repo, filename) pairs to try in the Hugging Face cache.
    hub_alternates: tuple[tuple[str, str], ...] = field(default=())

    def expected_size(self, path: str | os.PathLike) -> int | None:
        """Published size of the file at `path` (matched by file name), if known."""
        base = os.path.basename(os.fspath(path))
        for fname, size in self.sizes:
            if fname == base:
                return size
        return None

    @property
    def size(self) -> int | None:
        """Published size of the download target `paths[0]`."""
        return self.expected_size(self.paths[0])

    @property
    def source_url(self) -> str | None:
        if self.hf_repo and self.hf_filename:
            return HF_URL.format(repo=self.hf_repo, filename=self.hf_filename)
        return self.url

    def download_sets(self) -> list[str]:
        used = set(self.required_for) | set(self.optional_for)
        return [s for s, backends in DOWNLOAD_SETS.items() if used & set(backends)]


_MUSETALK = ("musetalk",)
_LATENTSYNC = ("latentsync-1.5", "latentsync-1.6")
_ALL = _MUSETALK + _LATENTSYNC

WEIGHT_FILES: dict[str, WeightFile] = {
    wf.name: wf
    for wf in (
        WeightFile(
            name="musetalk_unet",
            purpose="MuseTalk v1.5 UNet weights (plain state dict, fp32)",
            paths=("musetalkV15/unet.pth",),
            hf_repo="TMElyralab/MuseTalk",
            hf_filename="musetalkV15/unet.pth",
            sizes=(("unet.pth", 3_400_074_924),),
            sha256="7ebf6c98c181e20838e4c0054e96e944ac60d5d692cc01db42839fe11b787007",
            required_for=_MUSETALK,
        ),
        WeightFile(
            name="musetalk_unet_config",
            purpose="MuseTalk v1.5 UNet config (musetalk.json)",
            paths=("musetalkV15/musetalk.json",),
            hf_repo="TMElyralab/MuseTalk",
            hf_filename="musetalkV15/musetalk.json",
            sizes=(("musetalk.json", 748),),
            required_for=_MUSETALK,
        ),
        WeightFile(
            name="sd_vae_config",
            purpose="SD VAE (sd-vae-ft-mse) config",
            paths=("sd-vae/config.json", "sd-vae-ft-mse/config.json"),
            hf_repo="stabilityai/sd-vae-ft-mse",
            hf_filename="config.json",
            sizes=(("config.json", 547),),
            required_for=_ALL,
        ),
        WeightFile(
            name="sd_vae_weights",
            purpose="SD VAE (sd-vae-ft-mse) weights",
            paths=(
                "sd-vae/diffusion_pytorch_model.safetensors",
                "sd-vae/diffusion_pytorch_model.bin",
                "sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
                "sd-vae-ft-mse/diffusion_pytorch_model.bin",
            ),
            hf_repo="stabilityai/sd-vae-ft-mse",
            hf_filename="diffusion_pytorch_model.safetensors",
            sizes=(
                ("diffusion_pytorch_model.safetensors", 334_643_276),
                ("diffusion_pytorch_model.bin", 334_707_217),
            ),
            required_for=_ALL,
            hub_alternates=(("stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.bin"),),
        ),
        WeightFile(
            name="whisper_config",
            purpose="whisper-tiny config (Hugging Face format)",
            paths=("whisper/config.json",),
            hf_repo="openai/whisper-tiny",
            hf_filename="config.json",
            required_for=_MUSETALK,
        ),
        WeightFile(
            name="whisper_weights",
            purpose="whisper-tiny weights (Hugging Face format; the encoder is used)",
            paths=("whisper/pytorch_model.bin", "whisper/model.safetensors"),
            hf_repo="openai/whisper-tiny",
            hf_filename="pytorch_model.bin",
            sizes=(("pytorch_model.bin", 151_095_027),),
            sha256="9607f98a2b22d9e229ae43c52ecea79dcede9e0c5cfae67e8da6eda86d8aac1d",
            required_for=_MUSETALK,
            hub_alternates=(("openai/whisper-tiny", "model.safetensors"),),
        ),
        WeightFile(
            name="whisper_preprocessor",
            purpose="whisper-tiny feature-extractor config",
            paths=("whisper/preprocessor_config.json",),
            hf_repo="openai/whisper-tiny",
            hf_filename="preprocessor_config.json",
            optional_for=_MUSETALK,
        ),
        WeightFile(
            name="whisper_tiny_openai",
            purpose="whisper tiny.pt (OpenAI format), LatentSync's audio encoder",
            paths=(
                "whisper/tiny.pt",
                "checkpoints/whisper/tiny.pt",
                "latentsync-1.6/whisper/tiny.pt",
                "latentsync-1.5/whisper/tiny.pt",
            ),
            hf_repo="ByteDance/LatentSync-1.6",
            hf_filename="whisper/tiny.pt",
            sizes=(("tiny.pt", 75_572_083),),
            sha256="65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9",
            url=(
                "https://openaipublic.azureedge.net/main/whisper/models/"
                "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9/tiny.pt"
            ),
            required_for=_LATENTSYNC,
            extra_locations=("~/.cache/whisper/tiny.pt",),
            hub_alternates=(("ByteDance/LatentSync-1.5", "whisper/tiny.pt"),),
        ),
        WeightFile(
            name="latentsync15_unet",
            purpose="LatentSync 1.5 UNet3D checkpoint (256 px)",
            paths=("latentsync-1.5/latentsync_unet.pt",),
            shared_paths=("latentsync_unet.pt", "checkpoints/latentsync_unet.pt"),
            hf_repo="ByteDance/LatentSync-1.5",
            hf_filename="latentsync_unet.pt",
            sizes=(("latentsync_unet.pt", 5_072_348_184),),
            sha256="6440b49a7ccceff56cdc001f5f17605216337f5bbd66fa360139768926e23f51",
            required_for=("latentsync-1.5",),
        ),
        WeightFile(
            name="latentsync16_unet",
            purpose="LatentSync 1.6 UNet3D checkpoint (512 px)",
            paths=("latentsync-1.6/latentsync_unet.pt",),
            shared_paths=("latentsync_unet.pt", "checkpoints/latentsync_unet.pt"),
            hf_repo="ByteDance/LatentSync-1.6",
            hf_filename="latentsync_unet.pt",
            sizes=(("latentsync_unet.pt", 5_072_222_488),),
            sha256="0a478e89eb660f82da4c35dbdde8a5adfb27f99d1b4e50edd03729e1e98316d3",
            required_for=("latentsync-1.6",),
        ),
        WeightFile(
            name="face_parse",
            purpose="BiSeNet face parsing (79999_iter.pth); without it a fixed lower-face mask is used",
            paths=("face-parse-bisent/79999_iter.pth",),
            # Upstream publishes it on Google Drive only; this is the widely used hub mirror,
            # checked by size after download.
            hf_repo="camenduru/MuseTalk",
            hf_filename="face-parse-bisent/79999_iter.pth",
            sizes=(("79999_iter.pth", 53_289_463),),
            sha256="468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",
            url="https://drive.google.com/open?id=154JgKpzCPW82qINcVieuPH3fZ2e0P812",
            optional_for=_MUSETALK,
        ),
        WeightFile(
            name="face_parse_resnet",
            purpose="torchvision resnet18 that upstream BiSeNet reads at construction (no effect on weights)",
            paths=("face-parse-bisent/resnet18-5c106cde.pth",),
            sizes=(("resnet18-5c106cde.pth", 46_827_520),),
            url="https://download.pytorch.org/models/resnet18-5c106cde.pth",
            torch_hub_name="resnet18-5c106cde.pth",
        ),
        WeightFile(
            name="s3fd",
            purpose="S3FD face detector (face_alignment's file); without it the Haar detector is used",
            paths=(
                "s3fd-619a316812.pth",
                "face_detection/s3fd-619a316812.pth",
                "s3fd/s3fd-619a316812.pth",
                "auxiliary/s3fd-619a316812.pth",
                "checkpoints/auxiliary/s3fd-619a316812.pth",
            ),
            hf_repo="ByteDance/LatentSync-1.5",
            hf_filename="auxiliary/s3fd-619a316812.pth",
            sizes=(("s3fd-619a316812.pth", 89_843_225),),
            sha256="619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
            url="https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
            optional_for=_ALL,
            torch_hub_name="s3fd-619a316812.pth",
        ),
        WeightFile(
            name="fan_landmarks",
            purpose="FAN 68-point landmarks (TorchScript); without it landmarks are estimated from the box",
            paths=(
                "2DFAN4-cd938726ad.zip",
                "face_alignment/2DFAN4-cd938726ad.zip",
                "auxiliary/2DFAN4-cd938726ad.zip",
                "checkpoints/auxiliary/2DFAN4-cd938726ad.zip",
            ),
            hf_repo="ByteDance/LatentSync-1.5",
            hf_filename="auxiliary/2DFAN4-cd938726ad.zip",
            sizes=(("2DFAN4-cd938726ad.zip", 96_316_515),),
            sha256="cd938726adb1f15f361263cce2db9cb820c42585fa8796ec72ce19107f369a46",
            url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-cd938726ad.zip",
            optional_for=_LATENTSYNC,
            torch_hub_name="2DFAN4-cd938726ad.zip",
        ),
        *(
            WeightFile(
                name=f"insightface_{kind}",
                purpose=f"InsightFace buffalo_l {what}, LatentSync 1.6's alignment (inside "
                        "buffalo_l.zip); without it the 1.6 alignment uses FAN's 68 points",
                paths=(f"auxiliary/models/buffalo_l/{fname}", f"buffalo_l/{fname}"),
                url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                optional_for=("latentsync-1.6",),
                extra_locations=(f"~/.insightface/models/buffalo_l/{fname}",),
            )
            for kind, what, fname in (("detector", "face detector (SCRFD)", "det_10g.onnx"),
                                      ("landmarks", "106-point landmarks", "2d106det.onnx"))
        ),
    )
}


def weights_for(backend: str, include_optional: bool = False,
                registry: Mapping[str, WeightFile] | None = None) -> list[str]:
    """Names of the files `backend` needs (and, optionally, the ones it can use)."""
    registry = WEIGHT_FILES if registry is None else registry
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return [
        wf.name
        for wf in registry.values()
        if backend in wf.required_for or (include_optional and backend in wf.optional_for)
    ]


def files_in_set(set_name: str, registry: Mapping[str, WeightFile] | None = None) -> list[str]:
    """Names of the files a download set fetches: required and optional files of its backends."""
    registry = WEIGHT_FILES if registry is None else registry
    if set_name not in DOWNLOAD_SETS:
        raise ValueError(f"unknown set {set_name!r}; expected one of {', '.join(DOWNLOAD_SETS)}")
    backends = set(DOWNLOAD_SETS[set_name])
    return [
        wf.name
        for wf in registry.values()
        if backends & (set(wf.required_for) | set(wf.optional_for))
    ]


class MissingWeightsError(FileNotFoundError):
    """Some model files were not found. `missing` names them, `looked` lists where we searched."""

    def __init__(self, message: str, missing: list[str], looked: dict[str, list[str]]):
        super().__init__(message)
        self.missing = missing
        self.looked = looked

    def __str__(self) -> str:  # FileNotFoundError would otherwise print the args tuple
        return self.args[0]


@dataclass
class WeightSearch:
    """Result of looking for one file: where it is (or None), every place tried, rejections."""

    found: Path | None = None
    looked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _size_ok(wf: WeightFile, path: Path, search: WeightSearch, check_size: bool) -> bool:
    expected = wf.expected_size(path)
    if not check_size or expected is None:
        return True
    actual = path.stat().st_size
    if actual == expected:
        return True
    search.problems.append(
        f"{path} is {actual} bytes, expected {expected} (incomplete download or another file?)"
    )
    return False


def _hub_cache_lookup(repo: str, filename: str, cache_dir: str | os.PathLike | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # hub cache support is optional
        return None
    hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    # Besides a path it may return None or a "known not to exist" sentinel object.
    return Path(hit) if isinstance(hit, str) and os.path.isfile(hit) else None


def _default_torch_hub_dir() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.hub.get_dir()


def find_weight(
    wf: WeightFile,
    weights_dir: str | os.PathLike | None,
    *,
    check_size: bool = True,
    search_caches: bool = True,
    hf_cache_dir: str | os.PathLike | None = None,
    torch_hub_dir: str | os.PathLike | None = None,
    registry: Mapping[str, WeightFile] | None = None,
) -> WeightSearch:
    """Look for one file; returns where it was found (or not) and every place tried."""
    search = WeightSearch()
    if weights_dir is not None:
        root = Path(weights_dir)
        for rel in wf.paths:
            path = root / rel
            search.looked.append(str(path))
            if path.is_file() and _size_ok(wf, path, search, check_size):
                search.found = path
                return search
        for rel in wf.shared_paths:
            path = root / rel
            search.looked.append(f"{path} (unless it has another variant's size)")
            # A shared name (upstream's layout) is this variant's unless its size is another
            # variant's published size: a 1.6 file is never taken for 1.5, a fine-tune of
            # unpublished size is taken for the version asked for.
            if path.is_file() and path.stat().st_size not in _other_variant_sizes(wf, rel, registry):
                search.found = path
                return search
    if not search_caches:
        return search
    if wf.hf_repo and wf.hf_filename:
        for repo, fname in ((wf.hf_repo, wf.hf_filename),) + wf.hub_alternates:
            search.looked.append(f"Hugging Face cache ({repo}: {fname})")
            path = _hub_cache_lookup(repo, fname, hf_cache_dir)
            if path is not None and _size_ok(wf, path, search, check_size):
                search.found = path
                return search
    if wf.torch_hub_name:
        hub = torch_hub_dir if torch_hub_dir is not None else _default_torch_hub_dir()
        if hub is not None:
            path = Path(hub) / "checkpoints" / wf.torch_hub_name
            search.looked.append(str(path))
            if path.is_file() and _size_ok(wf, path, search, check_size):
                search.found = path
                return search
    for loc in wf.extra_locations:
        path = Path(os.path.expanduser(loc))
        search.looked.append(str(path))
        if path.is_file() and _size_ok(wf, path, search, check_size):
            search.found = path
            return search
    return search


def _other_variant_sizes(wf: WeightFile, rel: str,
                         registry: Mapping[str, WeightFile] | None = None) -> set[int]:
    return {other.size for other in (WEIGHT_FILES if registry is None else registry).values()
            if other.name != wf.name and rel in other.shared_paths and other.size is not None}


def shared_variant(path: str | os.PathLike,
                   registry: Mapping[str, WeightFile] | None = None) -> str | None:
    """Which registry file a file at a shared name is, judged by its published size."""
    size = os.path.getsize(path)
    for wf in (WEIGHT_FILES if registry is None else registry).values():
        if wf.shared_paths and wf.size == size:
            return wf.name
    return None


def format_size(size: int | None) -> str:
    """'748 bytes', '3,400.1 MB' or 'size unknown'."""
    if size is None:
        return "size unknown"
    return f"{size} bytes" if size < 1_000_000 else f"{size / 1e6:,.1f} MB"


def _how_to_get(wf: WeightFile, weights_dir: str | os.PathLike | None) -> list[str]:
    dest = Path(weights_dir) if weights_dir is not None else Path("<weights folder>")
    lines = []
    if wf.source_url:
        lines.append(f"get it: {wf.source_url} -> {dest / wf.paths[0]}")
    if wf.url and wf.url != wf.source_url:
        lines.append(f"original source: {wf.url}")
    return lines


def resolve_weights(
    weights_dir: str | os.PathLike | None,
    needed: Iterable[str],
    *,
    check_size: bool = True,
    search_caches: bool = True,
    hf_cache_dir: str | os.PathLike | None = None,
    torch_hub_dir: str | os.PathLike | None = None,
    registry: Mapping[str, WeightFile] | None = None,
) -> dict[str, Path]:
    """Paths of the `needed` files (registry names), or one `MissingWeightsError` for all missing.

    Looks in `weights_dir` (MuseTalk `models/` layout), then the Hugging Face hub cache (offline
    lookup) and the torch hub cache. With `check_size`, a file whose published size is known
    must have exactly that size.
    """
    registry = WEIGHT_FILES if registry is None else registry
    needed = list(dict.fromkeys(needed))
    unknown = [n for n in needed if n not in registry]
    if unknown:
        raise ValueError(
            f"unknown weight names {unknown}; known names: {', '.join(registry)}"
        )
    found: dict[str, Path] = {}
    searches: dict[str, WeightSearch] = {}
    for name in needed:
        search = find_weight(
            registry[name], weights_dir, check_size=check_size, search_caches=search_caches,
            hf_cache_dir=hf_cache_dir, torch_hub_dir=torch_hub_dir, registry=registry,
        )
        searches[name] = search
        if search.found is not None:
            found[name] = search.found
    missing = [n for n in needed if n not in found]
    if missing:
        where = f"under {weights_dir}" if weights_dir is not None else "(no weights folder given)"
        lines = [f"Missing {len(missing)} model file(s) {where}:"]
        for name in missing:
            wf = registry[name]
            size = f" ({format_size(wf.size)})" if wf.size else ""
            lines.append(f"  - {name}: {wf.purpose}{size}")
            lines.append("      looked in: " + "; ".join(searches[name].looked))
            for problem in searches[name].problems:
                lines.append(f"      found but rejected: {problem}")
            for how in _how_to_get(wf, weights_dir):
                lines.append(f"      {how}")
        sets = list(dict.fromkeys(
            registry[n].download_sets()[0] for n in missing
            if registry[n].hf_repo and registry[n].download_sets()
        ))
        dest = weights_dir if weights_dir is not None else "<weights folder>"
        for set_name in sets:
            lines.append("To download: " + DOWNLOAD_COMMAND.format(dest=dest, set=set_name))
        raise MissingWeightsError(
            "\n".join(lines), missing, {n: searches[n].looked for n in missing}
        )
    return found


class StateDictMismatchError(ValueError):
    """A checkpoint does not match the model: lists missing, unexpected and mis-shaped keys.

    Models subclass it for their own error name (`S3FDWeightsError`, ...); the report reads the
    same for all of them.
    """


def _short(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_state_dict(
    expected: Mapping[str, tuple[int, ...]],
    state_dict: Mapping[str, object],
    path: str | os.PathLike,
    what: str = "model",
    *,
    optional: Container[str] = (),
    error: type[StateDictMismatchError] = StateDictMismatchError,
) -> None:
    """Raise `error` unless `state_dict` has exactly the `expected` keys/shapes.

    Keys in `optional` may be absent from `state_dict` (entries the model fills itself, such as
    BatchNorm counters old files lack); when present their shape is checked like any other.
    The message names `path`, the `what` it should match and every offending key.
    """
    missing = [k for k in expected if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = []
    for key, shape in expected.items():
        tensor = state_dict.get(key)
        if tensor is None:
            continue
        got = tuple(getattr(tensor, "shape", ()))
        if got != tuple(shape):
            mismatched.append(f"{key}: file {list(got)} vs model {list(shape)}")
    if missing or unexpected or mismatched:
        parts = [f"{path} does not match the {what} ({len(expected)} tensors expected):"]
        if missing:
            parts.append(f"  missing {len(missing)}: {_short(missing)}")
        if unexpected:
            parts.append(f"  unexpected {len(unexpected)}: {_short(unexpected)}")
        if mismatched:
            parts.append(f"  wrong shape {len(mismatched)}: {_short(mismatched, 10)}")
        raise error("\n".join(parts))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a torch or safetensors checkpoint on the CPU without unpickling code.

    torch files are memory-mapped when their format allows it, so a multi-GB file is not read
    into RAM twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    import pickle

    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            # Files written in the legacy (pre-zip) torch format cannot be memory-mapped.
            if "mmap" not in str(err):
                raise
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"could not read {path} as a tensor checkpoint: {err}") from err


def read_diffusers_config(source, what: str) -> dict:
    """Constructor arguments from a diffusers config (a .json path or a parsed dict), without
    the '_class_name' / '_diffusers_version' bookkeeping keys; `what` names the file in errors."""
    import json
    from collections.abc import Mapping
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{what} not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON (expected {what}): {err}") from err
    return {k: v for k, v in raw.items() if not k.startswith("_")}
