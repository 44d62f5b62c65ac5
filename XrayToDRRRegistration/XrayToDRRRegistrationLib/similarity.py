"""Differentiable image similarities for registration: higher is better; the NCCs reach 1 for a perfect match.

Every measure takes two batches of images `a`, `b` (B, 1, H, W) and an optional `mask` (1 or B, 1, H, W) of
the pixels to compare (1 = use; the X-ray's exposed field, see preprocess.exposed_field) and returns (B,):

- `ncc`: global normalised cross-correlation (invariant to a linear change of intensities).
- `mncc`: multiscale NCC: the mean of the global NCC and of the local NCC in square patches (default 9 px),
  computed with box filters (local means, variances and covariances), so its cost is linear in the pixels;
  patches not wholly inside the mask are left out.
- `gradncc`: NCC of the Sobel gradient images (x and y) after a light Gaussian smoothing: insensitive to slow
  intensity trends (scatter, heel effect, dynamic-range compression).
- `gmncc`: half `mncc`, half `gradncc` (xvr's default measure): patches pull from afar, gradients sharpen.
- `mi`: normalised mutual information 2 I(X;Y) / (H(X) + H(Y)) from Parzen (Gaussian-kernel) joint histograms of
  images rescaled to [0, 1]: for intensity relationships that are not even roughly monotonic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIMILARITIES = ("gmncc", "ncc", "mncc", "gradncc", "mi")
EPS = 1e-8


def _weights(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(x[:, :1])
    return mask.to(x.dtype).expand(x.shape[0], 1, *x.shape[-2:])


def _wstats(x: torch.Tensor, w: torch.Tensor):
    """Weighted mean and standard deviation over (H, W), per image and channel."""
    total = w.sum(dim=(-1, -2), keepdim=True).clamp(min=EPS)
    mu = (x * w).sum(dim=(-1, -2), keepdim=True) / total
    var = (((x - mu) ** 2) * w).sum(dim=(-1, -2), keepdim=True) / total
    return mu, (var + EPS).sqrt(), total


def ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Global NCC per image (averaged over channels): (B,)."""
    w = _weights(a, mask)
    ma, sa, total = _wstats(a, w)
    mb, sb, _ = _wstats(b, w)
    score = ((a - ma) / sa * (b - mb) / sb * w).sum(dim=(-1, -2), keepdim=True) / total
    return score.flatten(1).mean(dim=1)


def patch_ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, patch: int = 9) -> torch.Tensor:
    """Mean local NCC over every `patch` x `patch` window wholly inside the mask (box filters, no padding)."""
    patch = int(max(1, min(patch, a.shape[-1], a.shape[-2])))
    w = _weights(a, mask)
    # Standardise globally first: local statistics stay well scaled whatever the intensity range.
    ma, sa, _ = _wstats(a, w)
    mb, sb, _ = _wstats(b, w)
    a, b = (a - ma) / sa, (b - mb) / sb
    box = lambda x: F.avg_pool2d(x, patch, stride=1)  # noqa: E731
    la, lb = box(a), box(b)
    va = (box(a * a) - la * la).clamp(min=0)
    vb = (box(b * b) - lb * lb).clamp(min=0)
    cov = box(a * b) - la * lb
    # The eps is relative to the unit global variance: flat patches (air, collimator) count as uncorrelated.
    local = cov / (va * vb + 1e-4).sqrt()
    inside = (box(w) > 0.999).to(a.dtype)
    return ((local * inside).sum(dim=(-1, -2)) / inside.sum(dim=(-1, -2)).clamp(min=1.0)).mean(dim=1)


def mncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, patch: int = 9) -> torch.Tensor:
    return 0.5 * ncc(a, b, mask) + 0.5 * patch_ncc(a, b, mask, patch)


def _gauss_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (B, C, H, W) with replicated borders."""
    if sigma <= 0:
        return x
    k = _gauss_kernel(sigma, x.device, x.dtype)
    r, c = (len(k) - 1) // 2, x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def sobel(x: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) -> (B,2,H,W) x and y derivatives (replicated borders)."""
    gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device, dtype=x.dtype)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), torch.stack([gx, gx.T])[:, None])


def _erode(mask: torch.Tensor | None, radius: int) -> torch.Tensor | None:
    if mask is None or radius < 1:
        return mask
    m = mask.float()
    return 1.0 - F.max_pool2d(1.0 - m, 2 * radius + 1, stride=1, padding=radius)


def gradncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, sigma: float = 1.0) -> torch.Tensor:
    # Gradients within reach of the mask edge (smoothing kernel + Sobel) see the masked border: leave them out.
    inner = _erode(mask, 1 + (max(1, int(round(3 * sigma))) if sigma > 0 else 0))
    return ncc(sobel(smooth(a, sigma)), sobel(smooth(b, sigma)), inner)


def gmncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, patch: int = 9,
          sigma: float = 1.0) -> torch.Tensor:
    return 0.5 * mncc(a, b, mask, patch) + 0.5 * gradncc(a, b, mask, sigma)


def _unit_range(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    big = torch.finfo(x.dtype).max
    flat, fw = x.flatten(1), w.flatten(1) > 0
    lo = torch.where(fw, flat, torch.full_like(flat, big)).min(dim=1).values.view(-1, 1, 1, 1)
    hi = torch.where(fw, flat, torch.full_like(flat, -big)).max(dim=1).values.view(-1, 1, 1, 1)
    return ((x - lo) / (hi - lo + EPS)).clamp(0, 1)


def mutual_information(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, bins: int = 32,
                       sigma: float | None = None) -> torch.Tensor:
    """Normalised MI in [0, 1] from Parzen-window joint histograms (Gaussian kernels about one bin wide)."""
    sigma = sigma if sigma is not None else 1.0 / bins
    w = _weights(a, mask)
    centres = torch.linspace(0.0, 1.0, bins, device=a.device, dtype=a.dtype)
    n = a.shape[0]
    weight = w.reshape(n, -1, 1)
    pa = torch.exp(-0.5 * ((_unit_range(a, w).reshape(n, -1, 1) - centres) / sigma) ** 2)   # (B, N, bins)
    pb = torch.exp(-0.5 * ((_unit_range(b, w).reshape(n, -1, 1) - centres) / sigma) ** 2)
    pa = pa / (pa.sum(-1, keepdim=True) + EPS) * weight
    pb = pb / (pb.sum(-1, keepdim=True) + EPS)
    joint = torch.einsum("bni,bnj->bij", pa, pb)
    joint = joint / (joint.sum(dim=(1, 2), keepdim=True) + EPS)
    ha = _entropy(joint.sum(2))
    hb = _entropy(joint.sum(1))
    hab = _entropy(joint.flatten(1))
    return 2.0 * (ha + hb - hab) / (ha + hb + EPS)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * (p + EPS).log()).sum(dim=1)


_TABLE = {"ncc": ncc, "mncc": mncc, "gradncc": gradncc, "gmncc": gmncc, "mi": mutual_information}


def get(name: str):
    """The similarity function called `name` (one of SIMILARITIES): f(a, b, mask=None) -> (B,)."""
    if name not in _TABLE:
        from XrayToDRRLib.errors import InputError

        raise InputError(f"unknown similarity '{name}'", None, f"use one of {', '.join(SIMILARITIES)}")
    return _TABLE[name]
