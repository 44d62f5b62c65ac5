"""pix2pix networks (Isola et al. 2017): a U-Net generator with skip connections and a conditional 70x70 PatchGAN.

Generator: `depth` = min(8, floor(log2(image_size))) stride-2 convolutions down to a 1x1 (up to 256 px) bottleneck
and back, each decoder level concatenated with its encoder level; channels ngf, 2ngf, 4ngf, 8ngf, 8ngf...; dropout
in the 8ngf decoder levels below the 4ngf one (as unet_256: three of them); tanh output in [-1, 1]. The image size
must be a multiple of 2**depth (for 256 px and more: of 256).

Discriminator: C64-C128-C256-C512 (4x4 convolutions, the last one stride 1) then a 1-channel convolution: each
output logit sees a 70x70 patch of the (input, image) pair stacked as two channels.

Attention (`attention`, off by default; Oktay et al. 2018, Attention U-Net): each skip connection passes through an
additive attention gate, x * sigmoid(psi(relu(W_x x + W_g g))), the gating signal g being the decoder's output at
that level (the coarser level upsampled), so the decoder can suppress skip features that carry patient-specific
detail. The gates' 1x1 convolutions are the only new weights: checkpoints without them load as before.

Normalisation: instance norm without affine parameters in both networks. pix2pix's default is batch norm with batch
size 1, which is instance norm while training; instance norm keeps that behaviour at test time, for any batch size
and under DistributedDataParallel (no batch statistics to synchronise).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from XrayToDRRLib.errors import InputError

MAX_DEPTH = 8
MIN_IMAGE_SIZE = 32  # the PatchGAN's five 4x4 convolutions need at least 32 px


def unet_depth(image_size: int) -> int:
    return min(MAX_DEPTH, int(math.floor(math.log2(max(int(image_size), 1)))))


def check_image_size(image_size: int) -> int:
    """Return the U-Net depth for `image_size`, or raise InputError naming the multiple it needs."""
    size = int(image_size)
    if size < MIN_IMAGE_SIZE:
        raise InputError(f"image size {size} is too small (the 70x70 PatchGAN needs at least {MIN_IMAGE_SIZE} px)",
                         None, "use --image-size 32, 64, 128 or 256")
    depth = unet_depth(size)
    multiple = 2 ** depth
    if size % multiple:
        lower, upper = (size // multiple) * multiple, (size // multiple + 1) * multiple
        raise InputError(f"image size {size} is not a multiple of {multiple} (the {depth}-level U-Net halves it "
                         f"{depth} times)", None,
                         f"use a multiple of {multiple}: --image-size {lower} or {upper}")
    return depth


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection: the skip `x` scaled per pixel by a weight in (0, 1) computed
    from `x` and the gating signal `g` (same spatial size)."""

    def __init__(self, x_channels: int, g_channels: int, inter_channels: int):
        super().__init__()
        self.wx = nn.Conv2d(x_channels, inter_channels, 1)
        self.wg = nn.Conv2d(g_channels, inter_channels, 1)
        self.psi = nn.Conv2d(inter_channels, 1, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.psi(torch.relu(self.wx(x) + self.wg(g))))


class UnetBlock(nn.Module):
    """One U-Net level: down-convolution, the inner levels, up-convolution; its output is concatenated with its
    input (the skip connection, through an attention gate with `attention`) except at the outermost level."""

    def __init__(self, outer: int, inner: int, in_channels: int | None = None, submodule: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, dropout: float = 0.0, attention: bool = False):
        super().__init__()
        self.outermost = outermost
        in_channels = in_channels or outer
        self.gate = AttentionGate(in_channels, outer, max(outer // 2, 1)) if attention and not outermost else None
        down = nn.Conv2d(in_channels, inner, kernel_size=4, stride=2, padding=1)
        if outermost:
            layers = [down, submodule, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(),
                      nn.ConvTranspose2d(inner, outer, kernel_size=4, stride=2, padding=1), nn.InstanceNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.InstanceNorm2d(inner), submodule, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1),
                      nn.InstanceNorm2d(outer)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        y = self.model(x)
        return torch.cat([x if self.gate is None else self.gate(x, y), y], dim=1)


class UnetGenerator(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 1, depth: int = 8, ngf: int = 64,
                 dropout: float = 0.5, attention: bool = False):
        super().__init__()
        if depth < 5:
            raise ValueError("the U-Net needs depth >= 5")
        block = UnetBlock(ngf * 8, ngf * 8, innermost=True, attention=attention)
        for _ in range(depth - 5):
            block = UnetBlock(ngf * 8, ngf * 8, submodule=block, dropout=dropout, attention=attention)
        block = UnetBlock(ngf * 4, ngf * 8, submodule=block, attention=attention)
        block = UnetBlock(ngf * 2, ngf * 4, submodule=block, attention=attention)
        block = UnetBlock(ngf, ngf * 2, submodule=block, attention=attention)
        self.model = UnetBlock(out_channels, ngf, in_channels=in_channels, submodule=block, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: input (B, in+out, H, W) -> logits (B, 1, h, w), one per 70x70 patch (n_layers=3)."""

    def __init__(self, in_channels: int = 2, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1), nn.InstanceNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(the activations after each LeakyReLU, the logits): the feature-matching loss compares the first."""
        feats = []
        for layer in self.model:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        return feats, x


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix initialisation: convolution weights ~ N(0, 0.02), biases 0 (uses torch's global RNG)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def build_generator(config: dict) -> UnetGenerator:
    return UnetGenerator(config.get("in_channels", 1), config.get("out_channels", 1), int(config["unet_depth"]),
                         int(config["ngf"]), float(config.get("dropout", 0.5)), bool(config.get("attention", False)))


def build_discriminator(config: dict) -> PatchDiscriminator:
    return PatchDiscriminator(config.get("in_channels", 1) + config.get("out_channels", 1), int(config["ndf"]),
                              int(config.get("n_layers_d", 3)))


class GANLoss(nn.Module):
    """'vanilla': BCEWithLogits on the patch logits (the pix2pix paper's loss, the default); 'lsgan': least squares
    (MSE to 1 / 0), often steadier."""

    MODES = ("vanilla", "lsgan")

    def __init__(self, mode: str = "vanilla"):
        super().__init__()
        if mode not in self.MODES:
            raise InputError(f"unknown GAN loss '{mode}'", None, f"use one of {', '.join(self.MODES)}")
        self.loss = nn.BCEWithLogitsLoss() if mode == "vanilla" else nn.MSELoss()

    def forward(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return self.loss(logits, target)


@contextlib.contextmanager
def cpu_convolutions(device: torch.device | str):
    """On the CPU, run convolutions with ATen's kernels instead of oneDNN (mkldnn): for these layers oneDNN was
    2-40x slower per training step on 2 CPU cores (torch 2.14, 32-256 px); on CUDA nothing changes."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
