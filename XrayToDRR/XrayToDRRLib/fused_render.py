"""FastRenderer's CUDA backend: nanodrr's fused Triton ray-marching kernel, fed one pyramid level at a time.

Why nanodrr's kernel rather than our own: it marches each ray in registers (the sample grid of the `grid_sample`
path never exists in memory), differentiates the pose analytically in the same pass, and is the field's fastest
published CUDA path. We call its differentiable op (`nanodrr.drr.backends.load_backend`) instead of
`nanodrr.render` because our inputs are already prepared: the level's attenuation cropped to the body box, a
camera -> voxel matrix from the canonical pose, and camera-frame rays. The op samples trilinearly at voxel
coordinates (voxel centres at integers) and clips each ray to the volume itself, so the crop is the air skipping.

The sample count depends on the level and the body box, never on the pose: a batch renders exactly like its poses
one by one, and a registration's loss does not jump when the pose moves a sample count over a boundary.

Triton kernels run only on CUDA tensors; with TRITON_INTERPRET=1 (set before anything imports triton) they run,
slowly, on CPU tensors: that is how the tests check this path on a machine without a GPU.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

BACKENDS = ("auto", "torch", "triton", "numba")


def interpreted() -> bool:
    """Whether Triton runs its interpreter (CPU tensors allowed, for tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_op():
    """nanodrr's fused op, or None when it does not import here (no triton, or no nanodrr)."""
    try:
        from nanodrr.drr.backends import load_backend

        return load_backend("triton")
    except Exception:  # noqa: BLE001  # not installed or a broken install: the torch backend still works
        return None


def pick_backend(requested: str, device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA when its kernel imports, 'numba' on the CPU when numba imports, else 'torch'.
    Asking for a backend where it cannot run raises ValueError (the caller turns it into an input error)."""
    from . import numba_render

    if requested not in BACKENDS:
        raise ValueError(f"unknown backend '{requested}': use one of {', '.join(BACKENDS)}")
    usable = (device.type == "cuda" or interpreted()) and triton_op() is not None
    on_cpu = device.type == "cpu" and numba_render.available()
    if requested == "auto":
        return "triton" if usable and device.type == "cuda" else "numba" if on_cpu else "torch"
    if requested == "triton" and not usable:
        raise ValueError("the triton backend needs a CUDA GPU with triton and nanodrr installed")
    if requested == "numba" and not on_cpu:
        raise ValueError("the numba backend runs on the CPU and needs numba installed")
    return requested


class FusedLevel:
    """One pyramid level as the fused kernel reads it: the body box's voxels (D,H,W) and world -> voxel."""

    def __init__(self, level, chord: float):
        """`level`: a fast_render pyramid level (attenuation `mu`, `affine`, body box `lo`..`hi`, `voxel`);
        `chord`: the longest line through its body box (mm)."""
        affine, lo, hi = level.affine, level.lo, level.hi
        (i0, j0, k0), (i1, j1, k1) = lo, hi
        self.volume = level.mu[0, 0, k0:k1 + 1, j0:j1 + 1, i0:i1 + 1].contiguous()
        shifted = affine.copy()
        shifted[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]       # voxel 0 of the crop = voxel `lo` of the level
        device = self.volume.device
        self.voxel_from_world = torch.as_tensor(np.linalg.inv(shifted), dtype=torch.float32, device=device)
        self.centre = torch.as_tensor(shifted[:3, :3] @ ((hi - lo) / 2.0) + shifted[:3, 3], dtype=torch.float32,
                                      device=device)
        self.chord, self.voxel = chord, level.voxel

    def render(self, world_from_camera: torch.Tensor, directions: torch.Tensor, width: int,
               step_factor: float = 1.0) -> torch.Tensor:
        """(B,R) line integrals along unit camera-frame `directions` (R,3) from each pose's source."""
        n_samples = math.ceil(max(2.0, self.chord / (self.voxel * step_factor)))
        b = world_from_camera.shape[0]
        matrix = (self.voxel_from_world[None] @ world_from_camera)[:, :3, :].contiguous()  # camera -> voxel
        with torch.no_grad():
            # Rays end past the far side of the box (the kernel clips them to the volume): any longer length
            # gives the same integral, so the length carries no gradient.
            length = (world_from_camera[:, :3, 3] - self.centre).norm(dim=-1) + self.chord  # (B,)
            targets = (directions[None] * length[:, None, None]).contiguous()               # (B,R,3)
            steps = (length[:, None] / n_samples).expand(b, directions.shape[0]).contiguous()
            source = torch.zeros(b, 1, 3, device=directions.device)
        out = triton_op()(self.volume, self.volume, matrix, source, targets, steps, n_samples, 1, width, False)
        return out[:, 0]
