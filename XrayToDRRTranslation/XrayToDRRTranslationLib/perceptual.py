"""Perceptual (feature) losses for pix2pix, with no weights downloaded at run time.

- "discriminator" (the default network): feature matching (pix2pixHD, Wang et al. 2018): the mean L1 distance
  between the PatchGAN's activations after each LeakyReLU for the real pair (x, y) and the generated one (x, G(x)).
  The network is the one being trained, so nothing is fetched or shipped.
- "vgg16": the L1 distance between torchvision VGG16 (ImageNet) relu1_2, relu2_2 and relu3_3 features of G(x) and
  y (gray repeated to RGB, ImageNet normalisation), usable only when its weights already sit in the torch hub cache
  (torch.hub.get_dir()/checkpoints); otherwise an InputError says where to put the file. It is never downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from XrayToDRRLib.errors import InputError

NETWORKS = ("discriminator", "vgg16")
VGG_LAYERS = (3, 8, 15)  # relu1_2, relu2_2, relu3_3 in torchvision's vgg16().features


def check_network(name: str) -> None:
    if name not in NETWORKS:
        raise InputError(f"unknown perceptual-loss network '{name}'", None, f"use one of {', '.join(NETWORKS)}")
    if name == "vgg16":
        vgg16_weights_file()


def feature_matching(fake_feats: list[torch.Tensor], real_feats: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the L1 distance; the real features carry no gradient."""
    return torch.stack([torch.nn.functional.l1_loss(f, r.detach()) for f, r in zip(fake_feats, real_feats)]).mean()


def vgg16_weights_file() -> Path:
    """The cached ImageNet VGG16 weights, or an InputError (never a download)."""
    from torchvision.models import VGG16_Weights

    url = VGG16_Weights.IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise InputError("the VGG16 perceptual loss needs torchvision's ImageNet VGG16 weights in the local torch "
                         "cache, and nothing is downloaded at run time", path,
                         "copy that file there from a machine that has it, or use --perceptual-net discriminator")
    return path


class VGGLoss(nn.Module):
    """L1 distance of frozen VGG16 features; images in [-1, 1], one channel."""

    def __init__(self):
        super().__init__()
        from torchvision.models import vgg16

        from XrayToDRRLib.torchfiles import load_torch_file

        net = vgg16()
        path = vgg16_weights_file()
        try:
            net.load_state_dict(load_torch_file(path, "give torchvision's vgg16-397923af.pth"))
        except RuntimeError as e:
            raise InputError(f"is not torchvision's VGG16 weights ({str(e)[:100]})", path,
                             "replace it with torchvision's file") from None
        self.features = net.features[: VGG_LAYERS[-1] + 1].eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) / 2).repeat(1, 3, 1, 1)
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG_LAYERS:
                out.append(x)
        return out

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            real_feats = self._feats(real)
        return feature_matching(self._feats(fake), real_feats)
