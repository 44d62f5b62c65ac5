"""Image quality metrics on images in [0, 1] (data range 1), defined exactly as scikit-image defines them.

- PSNR = 10 log10(data_range^2 / MSE)  (skimage.metrics.peak_signal_noise_ratio)
- SSIM: 7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance (N/(N-1)), mean over the windows that lie
  fully inside the image  (skimage.metrics.structural_similarity defaults)
- MAE = mean |a - b|;  Dice = 2|A and B| / (|A| + |B|) (1 when both are empty)

Functions take numpy (H, W) or torch (B, 1, H, W) / (B, H, W); with a batch they return one value per image.
Computed in float64 with torch, so the same code serves validation on the GPU and evaluation on files.
"""

from __future__ import annotations

import numpy as np
import torch

SSIM_WINDOW = 7
K1, K2 = 0.01, 0.03


def _batch(x) -> tuple[torch.Tensor, bool]:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().to(torch.float64)
    single = t.ndim == 2
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    return t, single


def _out(values: torch.Tensor, single: bool):
    values = values.cpu().numpy()
    return float(values[0]) if single else values


def mse(a, b):
    ta, single = _batch(a)
    tb, _ = _batch(b)
    return _out(((ta - tb) ** 2).flatten(1).mean(1), single)


def mae(a, b):
    ta, single = _batch(a)
    tb, _ = _batch(b)
    return _out((ta - tb).abs().flatten(1).mean(1), single)


def psnr(prediction, target, data_range: float = 1.0):
    ta, single = _batch(prediction)
    tb, _ = _batch(target)
    err = ((ta - tb) ** 2).flatten(1).mean(1)
    return _out(10.0 * torch.log10(data_range ** 2 / err), single)


def ssim(prediction, target, data_range: float = 1.0, win_size: int = SSIM_WINDOW):
    x, single = _batch(prediction)
    y, _ = _batch(target)
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size} pixels")
    pool = lambda t: torch.nn.functional.avg_pool2d(t, win_size, stride=1)  # noqa: E731  interior windows only
    n = win_size * win_size
    cov_norm = n / (n - 1.0)
    ux, uy = pool(x), pool(y)
    vx = cov_norm * (pool(x * x) - ux * ux)
    vy = cov_norm * (pool(y * y) - uy * uy)
    vxy = cov_norm * (pool(x * y) - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return _out(s.flatten(1).mean(1), single)


def dice(a, b) -> float:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
