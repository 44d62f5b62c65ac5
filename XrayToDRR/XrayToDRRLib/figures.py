"""Figures people look at instead of reading numbers: side-by-side panels, overlays, checkerboards."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .images import to_uint8


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate square tiles of two same-size images (both windowed to 8 bits first)."""
    a8, b8 = to_uint8(a), to_uint8(b)
    rows, cols = np.indices(a8.shape)
    tile = max(1, min(a8.shape) // tiles)
    return np.where(((rows // tile) + (cols // tile)) % 2 == 0, a8, b8)


def overlay(base: np.ndarray, top: np.ndarray) -> np.ndarray:
    """RGB: base in grey, top's edges in a warm colour, so misalignment shows at a glance."""
    from skimage.filters import gaussian, sobel

    grey = to_uint8(base).astype(np.float32) / 255
    edges = sobel(gaussian(to_uint8(top).astype(np.float32) / 255, sigma=max(1.0, min(top.shape) / 256)))
    # Keep the strong edges only: weak ones are noise and would hide the base image.
    edges = np.clip((edges / (np.percentile(edges, 99) + 1e-6) - 0.25) / 0.75, 0, 1)
    rgb = np.stack([grey, grey, grey], axis=-1)
    rgb[..., 0] = np.maximum(rgb[..., 0], edges)
    rgb[..., 1] = np.maximum(rgb[..., 1], 0.6 * edges)
    return rgb


def panels(images: list[np.ndarray], titles: list[str], path: str | Path, suptitle: str = "",
           panel_size: float = 3.2) -> Path:
    """Save a row of image panels (grey images windowed by percentiles; RGB shown as is) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(panel_size * len(images), panel_size + 0.5), squeeze=False)
    for ax, img, title in zip(axes[0], images, titles):
        ax.imshow(img if np.asarray(img).ndim == 3 else to_uint8(img), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
