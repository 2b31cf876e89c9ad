"""BiSeNet face parsing (19 CelebAMask-HQ classes, ResNet-18 context path).

The layout mirrors the checkpoint MuseTalk ships as ``face-parse-bisent/79999_iter.pth``:
attribute names are the state-dict keys (``cp.resnet.*``, ``cp.arm16.*``, ``ffm.*``,
``conv_out.*`` ...). There is no spatial path: the 1/8 backbone feature stands in for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipgraph.models.checkpoint import StateDictMismatchError, check_state_dict, load_strict, read_state_dict

PARSE_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=1, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if in_ch != out_ch or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = F.relu(self.bn1(self.conv1(x)))
        residual = self.bn2(self.conv2(residual))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))


class ResNet18(nn.Module):
    """torchvision ResNet-18 names without avgpool/fc; returns the 1/8, 1/16, 1/32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.layer1(x)
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


def _global_avg(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinement(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch, 3, 1)
        self.conv_atten = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(_global_avg(feat))))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        # The pooled context is broadcast over the 1/32 map (a 1x1 -> HxW nearest upsample).
        avg = self.conv_avg(_global_avg(feat32))
        feat32_sum = self.arm32(feat32) + avg
        feat32_up = F.interpolate(feat32_sum, size=feat16.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(feat32_up)

        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = F.interpolate(feat16_sum, size=feat8.shape[2:], mode="nearest")
        feat16_up = self.conv_head16(feat16_up)
        return feat8, feat16_up, feat32_up


class FeatureFusion(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_ch, out_ch, 1, 0)
        self.conv1 = nn.Conv2d(out_ch, out_ch // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch // 4, out_ch, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_avg(feat)))))
        return feat * atten + feat


class OutputHead(nn.Module):
    def __init__(self, in_ch: int, mid_ch: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, mid_ch, 3, 1)
        self.conv_out = nn.Conv2d(mid_ch, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face parser: image [B, 3, H, W] (ImageNet-normalised RGB) -> logits [B, n_classes, H, W]."""

    def __init__(self, n_classes: int = 19):
        super().__init__()
        self.n_classes = n_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        # Auxiliary heads: only used in training, kept so the checkpoint loads strictly.
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "BiSeNet":
        known = {"n_classes"}
        unknown = [k for k in config if k not in known and not str(k).startswith("_")]
        if unknown:
            raise ValueError(f"BiSeNet config: unknown keys {unknown}; expected only {sorted(known)}")
        return cls(n_classes=int(config.get("n_classes", 19)))

    def forward(self, x: torch.Tensor, aux: bool = False):
        size = x.shape[2:]
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        # The 1/8 backbone feature replaces the spatial path.
        out = self.conv_out(self.ffm(feat8, feat_cp8))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        if not aux:
            return out
        out16 = F.interpolate(self.conv_out16(feat_cp8), size=size, mode="bilinear", align_corners=True)
        out32 = F.interpolate(self.conv_out32(feat_cp16), size=size, mode="bilinear", align_corners=True)
        return out, out16, out32


# ---------------------------------------------------------------- loading


class BiSeNetWeightsError(StateDictMismatchError):
    """A BiSeNet weights file does not match the model (or cannot be read as one)."""


_BACKBONE = "cp.resnet."


def load_bisenet(path: str | os.PathLike, resnet_path: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> BiSeNet:
    """Build BiSeNet(19) and load ``79999_iter.pth`` strictly; inference mode, no gradients.

    ``resnet_path`` (torchvision ``resnet18-5c106cde.pth``) is optional: upstream insists on
    reading it, but the main file overwrites every backbone entry, so it is only validated.
    """
    with torch.device("meta"):
        model = BiSeNet(n_classes=19)
    if resnet_path is not None:
        # Same rule as upstream: every key containing "fc" is skipped, every other key must be a
        # backbone entry of the right shape; backbone keys it lacks are simply left alone.
        backbone = {k[len(_BACKBONE):]: tuple(v.shape) for k, v in model.state_dict().items()
                    if k.startswith(_BACKBONE)}
        entries = read_state_dict(resnet_path, "ResNet-18", BiSeNetWeightsError)
        check_state_dict(backbone, {k: v for k, v in entries.items() if "fc" not in k},
                         os.fspath(resnet_path), "torchvision ResNet-18 backbone of BiSeNet",
                         optional=backbone, error=BiSeNetWeightsError)
    main = read_state_dict(path, "BiSeNet", BiSeNetWeightsError)
    return load_strict(model, main, os.fspath(path),
                       "BiSeNet(n_classes=19) (MuseTalk face-parse-bisent/79999_iter.pth layout)",
                       BiSeNetWeightsError, device=device, dtype=dtype)


# ---------------------------------------------------------------- inference


class FaceParser:
    """Batched face parsing: RGB uint8 images of any size -> uint8 class maps, 512 x 512.

    Preprocessing as upstream: PIL-style bilinear resize to 512 x 512, scale to [0, 1],
    ImageNet normalisation. The map stays at 512 x 512:
    upstream builds its blend region at that size and resizes only the final mask.
    """

    def __init__(self, model: BiSeNet, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, batch_size: int = 8):
        ref = next(model.parameters())
        self.device = torch.device(device) if device is not None else ref.device
        self.dtype = dtype if dtype is not None else ref.dtype
        self.batch_size = max(1, int(batch_size))
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def _to_input(self, image: np.ndarray, index: int) -> torch.Tensor:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"FaceParser.parse: image {index} must be an RGB uint8 array HxWx3, got {desc}")
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).float()
        # PIL's BILINEAR resize: an antialiased triangle filter applied width first, then
        # height, rounding to 8 bits after each pass. Done the same way it agrees with PIL
        # on all but about 0.1% of values (those off by one grey level).
        for size in ((x.shape[2], PARSE_SIZE), (PARSE_SIZE, PARSE_SIZE)):
            if tuple(x.shape[2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                  antialias=True).round_().clamp_(0, 255)
        return x

    @torch.inference_mode()
    def preprocess(self, images: Sequence[np.ndarray], first_index: int = 0) -> torch.Tensor:
        """Model input [B, 3, 512, 512] on the parser's device and dtype."""
        x = torch.cat([self._to_input(img, first_index + i) for i, img in enumerate(images)])
        return ((x / 255.0 - self._mean) / self._std).to(self.dtype)

    @torch.inference_mode()
    def parse(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Class maps (uint8, 512 x 512), one per image."""
        maps: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            x = self.preprocess(images[start:start + self.batch_size], start)
            labels = self.model(x).argmax(dim=1).to(torch.uint8).cpu().numpy()
            maps.extend(labels[i] for i in range(labels.shape[0]))
        return maps
