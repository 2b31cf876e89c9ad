"""Every model file the pipeline can use: where it sits in a weights folder, where it comes
from, its published size, and which models need it.

`paths` name the places in a weights folder, most preferred first; they cover the layouts users
already have (MuseTalk's `models/`, LatentSync's `checkpoints/`, InsightFace's `buffalo_l/`,
face_alignment's file names). A place may end in a `*` pattern (FAN ships under several
names); `paths[0]` is a plain path, the download target. `models/weight_finder.py` looks them
up, with the Hugging Face and torch hub caches and `extra_locations`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

HF_URL = "https://huggingface.co/{repo}/resolve/main/{filename}"

MODELS = ("musetalk", "latentsync-1.5", "latentsync-1.6")
# Download sets: each model by name, "latentsync" = the current upstream release (1.6).
DOWNLOAD_SETS = {
    "musetalk": ("musetalk",),
    "latentsync": ("latentsync-1.6",),
    "latentsync-1.5": ("latentsync-1.5",),
    "latentsync-1.6": ("latentsync-1.6",),
    "all": MODELS,
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
    # File names (or `*` patterns) inside `torch.hub.get_dir()/checkpoints/`, where
    # face_alignment and torchvision cache their downloads.
    torch_hub_names: tuple[str, ...] = ()
    # Other absolute places (with ~ expanded) where a tool may have cached the file.
    extra_locations: tuple[str, ...] = ()
    # More (repo, filename) pairs to try in the Hugging Face cache.
    hub_alternates: tuple[tuple[str, str], ...] = field(default=())

    def expected_size(self, path: str | os.PathLike) -> int | None:
        """Published size of the file at `path` (matched by file name), if known."""
        return dict(self.sizes).get(os.path.basename(os.fspath(path)))

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
        return [s for s, models in DOWNLOAD_SETS.items() if used & set(models)]


def _places(folders: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    """Every name in every folder, folder by folder ("" = the weights folder itself)."""
    return tuple(f"{folder}/{name}" if folder else name for folder in folders for name in names)


FAN_PATTERNS = ("2DFAN4*.zip", "2DFAN4*.pth.tar")

_MUSETALK = ("musetalk",)
_LATENTSYNC = ("latentsync-1.5", "latentsync-1.6")
_ALL = _MUSETALK + _LATENTSYNC

def _file(name: str, purpose: str, paths: str | tuple[str, ...], hf: str = "", size: int = 0,
          sha256: str | None = None, **more) -> WeightFile:
    """One row of the table: `paths` one place or several, `hf` "owner/repo:filename" on the
    Hugging Face hub, `size` the published size of `paths[0]` (`sizes=` for several)."""
    paths = (paths,) if isinstance(paths, str) else paths
    hf_repo, hf_filename = hf.split(":") if hf else (None, None)
    sizes = more.pop("sizes", ((os.path.basename(paths[0]), size),) if size else ())
    return WeightFile(name, purpose, paths, hf_repo, hf_filename, sizes, sha256, **more)


# LatentSync 1.5 and 1.6 both ship `latentsync_unet.pt` at the top level of upstream's layout.
_LATENTSYNC_UNET_SHARED = ("latentsync_unet.pt", "checkpoints/latentsync_unet.pt")
_FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/"

WEIGHT_FILES: dict[str, WeightFile] = {
    wf.name: wf
    for wf in (
        _file("musetalk_unet", "MuseTalk v1.5 UNet weights (plain state dict, fp32)", "musetalkV15/unet.pth",
              "TMElyralab/MuseTalk:musetalkV15/unet.pth", 3_400_074_924,
              "7ebf6c98c181e20838e4c0054e96e944ac60d5d692cc01db42839fe11b787007", required_for=_MUSETALK),
        _file("musetalk_unet_config", "MuseTalk v1.5 UNet config (musetalk.json)", "musetalkV15/musetalk.json",
              "TMElyralab/MuseTalk:musetalkV15/musetalk.json", 748, required_for=_MUSETALK),
        _file("sd_vae_config", "SD VAE (sd-vae-ft-mse) config", _places(("sd-vae", "sd-vae-ft-mse"), ("config.json",)),
              "stabilityai/sd-vae-ft-mse:config.json", 547, required_for=_ALL),
        _file("sd_vae_weights", "SD VAE (sd-vae-ft-mse) weights",
              _places(("sd-vae", "sd-vae-ft-mse"), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
              "stabilityai/sd-vae-ft-mse:diffusion_pytorch_model.safetensors", required_for=_ALL,
              sizes=(("diffusion_pytorch_model.safetensors", 334_643_276), ("diffusion_pytorch_model.bin", 334_707_217)),
              hub_alternates=(("stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.bin"),)),
        _file("whisper_config", "whisper-tiny config (Hugging Face format)", "whisper/config.json",
              "openai/whisper-tiny:config.json", required_for=_MUSETALK),
        _file("whisper_weights", "whisper-tiny weights (Hugging Face format; the encoder is used)",
              ("whisper/pytorch_model.bin", "whisper/model.safetensors"), "openai/whisper-tiny:pytorch_model.bin",
              151_095_027, "9607f98a2b22d9e229ae43c52ecea79dcede9e0c5cfae67e8da6eda86d8aac1d",
              required_for=_MUSETALK, hub_alternates=(("openai/whisper-tiny", "model.safetensors"),)),
        _file("whisper_preprocessor", "whisper-tiny feature-extractor config", "whisper/preprocessor_config.json",
              "openai/whisper-tiny:preprocessor_config.json", optional_for=_MUSETALK),
        _file("whisper_tiny_openai", "whisper tiny.pt (OpenAI format), LatentSync's audio encoder",
              _places(("whisper", "checkpoints/whisper", "latentsync-1.6/whisper", "latentsync-1.5/whisper"),
                      ("tiny.pt",)),
              "ByteDance/LatentSync-1.6:whisper/tiny.pt", 75_572_083,
              "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9",
              url=("https://openaipublic.azureedge.net/main/whisper/models/"
                   "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9/tiny.pt"),
              required_for=_LATENTSYNC, extra_locations=("~/.cache/whisper/tiny.pt",),
              hub_alternates=(("ByteDance/LatentSync-1.5", "whisper/tiny.pt"),)),
        _file("latentsync15_unet", "LatentSync 1.5 UNet3D checkpoint (256 px)", "latentsync-1.5/latentsync_unet.pt",
              "ByteDance/LatentSync-1.5:latentsync_unet.pt", 5_072_348_184,
              "6440b49a7ccceff56cdc001f5f17605216337f5bbd66fa360139768926e23f51",
              required_for=("latentsync-1.5",), shared_paths=_LATENTSYNC_UNET_SHARED),
        _file("latentsync16_unet", "LatentSync 1.6 UNet3D checkpoint (512 px)", "latentsync-1.6/latentsync_unet.pt",
              "ByteDance/LatentSync-1.6:latentsync_unet.pt", 5_072_222_488,
              "0a478e89eb660f82da4c35dbdde8a5adfb27f99d1b4e50edd03729e1e98316d3",
              required_for=("latentsync-1.6",), shared_paths=_LATENTSYNC_UNET_SHARED),
        # The weights folder may also be face-parse-bisent/ itself. Upstream publishes the file
        # on Google Drive only; the hub source is the widely used mirror, checked by size.
        _file("face_parse", "BiSeNet face parsing (79999_iter.pth); without it a fixed lower-face mask is used",
              ("face-parse-bisent/79999_iter.pth", "79999_iter.pth"), "camenduru/MuseTalk:face-parse-bisent/79999_iter.pth",
              53_289_463, "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",
              url="https://drive.google.com/open?id=154JgKpzCPW82qINcVieuPH3fZ2e0P812", optional_for=_MUSETALK),
        _file("face_parse_resnet",
              "torchvision resnet18 that upstream BiSeNet reads at construction (no effect on weights)",
              _places(("face-parse-bisent", ""), ("resnet18-5c106cde.pth",)), size=46_827_520,
              url="https://download.pytorch.org/models/resnet18-5c106cde.pth",
              torch_hub_names=("resnet18-5c106cde.pth",)),
        # MuseTalk-style folders first, then LatentSync's `auxiliary/`; "s3fd.pth" is the name
        # manual downloads often get.
        _file("s3fd", "S3FD face detector (face_alignment's file); without it the Haar detector is used",
              _places(("", "face_detection", "face-detection", "s3fd", "sfd", "face_detection/sfd",
                       "auxiliary", "checkpoints/auxiliary"), ("s3fd-619a316812.pth", "s3fd.pth")),
              "ByteDance/LatentSync-1.5:auxiliary/s3fd-619a316812.pth", 89_843_225,
              "619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
              url=_FAN_URL + "s3fd-619a316812.pth", optional_for=_ALL, torch_hub_names=("s3fd-619a316812.pth",)),
        # The published file, then any 2DFAN4 release (TorchScript .zip or state-dict .pth.tar)
        # in our folder, LatentSync's `auxiliary/`, or the top level.
        _file("fan_landmarks", "FAN 2DFAN4 68-point landmarks; without it landmarks are estimated from the box",
              ("2DFAN4-cd938726ad.zip",
               *_places(("face_alignment", "auxiliary", "checkpoints/auxiliary", ""), FAN_PATTERNS)),
              "ByteDance/LatentSync-1.5:auxiliary/2DFAN4-cd938726ad.zip", 96_316_515,
              "cd938726adb1f15f361263cce2db9cb820c42585fa8796ec72ce19107f369a46",
              url=_FAN_URL + "2DFAN4-cd938726ad.zip", optional_for=_LATENTSYNC, torch_hub_names=FAN_PATTERNS),
        _file("syncnet", "SyncNet (joonson/syncnet_python), for the LSE-C / LSE-D scores of ab_compare and "
              "the active speaker (detect.face: speaker)",
              _places(("", "auxiliary", "checkpoints/auxiliary"), ("syncnet_v2.model",)),
              url="https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"),
        # "" for a folder that is the pack itself; `auxiliary/models/buffalo_l` is where
        # LatentSync's FaceAnalysis(root="checkpoints/auxiliary") puts it. insightface 0.7.3
        # always downloads to ~/.insightface (it reads no environment variable).
        *(
            _file(f"insightface_{kind}",
                  f"InsightFace buffalo_l {what}, LatentSync 1.6's alignment (inside buffalo_l.zip); "
                  "without it the 1.6 alignment uses FAN's 68 points",
                  _places(("buffalo_l", "", "auxiliary/models/buffalo_l", "checkpoints/auxiliary/models/buffalo_l",
                           "models/buffalo_l", "insightface/models/buffalo_l"), (fname,)),
                  url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                  optional_for=("latentsync-1.6",), extra_locations=(f"~/.insightface/models/buffalo_l/{fname}",))
            for kind, what, fname in (("detector", "face detector (SCRFD)", "det_10g.onnx"),
                                      ("landmarks", "106-point landmarks", "2d106det.onnx"))
        ),
    )
}


def files_in_set(set_name: str, registry: Mapping[str, WeightFile] | None = None) -> list[str]:
    """Names of the files a download set fetches: required and optional files of its models."""
    if set_name not in DOWNLOAD_SETS:
        raise ValueError(f"unknown set {set_name!r}; expected one of {', '.join(DOWNLOAD_SETS)}")
    return [wf.name for wf in (WEIGHT_FILES if registry is None else registry).values()
            if set_name in wf.download_sets()]
