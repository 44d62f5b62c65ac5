"""FastRenderer's CPU backend: one compiled (numba) loop per ray instead of `grid_sample` over a grid of samples.

Why: the torch path materialises every sample's coordinates (12 bytes each) and walks them through several
parallel ops; on a CPU the memory traffic and the threads' barriers cost more than the trilinear reads. Here each
ray is clipped to the level's body box, marched at the level's voxel size (times the mode's step factor, the HQ
rule of the torch path) and summed in registers, rays in detector order so neighbours reuse the cache lines of
the volume. Each ray takes as many samples as its own chord needs (the torch path takes its pose's longest
chord for all), so a batch renders exactly like its poses one by one.

No gradients: `FastRenderer.render_tensor` uses the torch path whenever the pose needs one.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import threading

import numpy as np
import torch

_LOCK = threading.Lock()  # numba's workqueue threading layer must not be entered from two threads at once
numba = None  # the module, imported by _kernel(): the march's `numba.prange` is resolved when it compiles


def available() -> bool:
    """Whether numba is installed (imported only when this backend first renders: it takes about a second)."""
    return importlib.util.find_spec("numba") is not None


@functools.cache
def _kernel():
    """The compiled march: about 2 s the first time, then cached next to this file (or numba's user cache)."""
    global numba
    import numba as module

    numba = module
    return numba, numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)(_march_impl)


def render_level(level, world_from_camera: torch.Tensor, directions: torch.Tensor, step_factor: float = 1.0):
    """(B,R) line integrals (mm x 1/mm) of a fast_render pyramid level along unit camera-frame `directions`
    (R,3) from each pose's source; `world_from_camera` (B,4,4)."""
    voxel_from_world = np.linalg.inv(level.affine)
    poses = world_from_camera.detach().cpu().double().numpy()
    voxel_from_camera = np.ascontiguousarray((voxel_from_world[None] @ poses)[:, :3, :], dtype=np.float32)
    mu = level.mu[0, 0].detach().cpu().contiguous().numpy()  # (K,J,I) with one voxel of air around
    shape = np.array(mu.shape[::-1], np.int64)
    out = np.empty((poses.shape[0], directions.shape[0]), np.float32)
    numba, march = _kernel()
    with _LOCK:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        march(mu.reshape(-1), shape, level.lo.astype(np.float32), level.hi.astype(np.float32), voxel_from_camera,
               np.ascontiguousarray(directions.detach().cpu().numpy(), dtype=np.float32),
               np.float32(level.voxel * step_factor), out)
    return torch.from_numpy(out).to(world_from_camera.device)


def _march_impl(mu, shape, lo, hi, voxel_from_camera, directions, step, out):
    """`mu`: the level flattened from (K,J,I); `shape`: (I, J, K); `lo`, `hi`: the body box in voxel indices."""
    n_poses, n_rays = out.shape
    size_i, size_j, size_k = shape[0], shape[1], shape[2]
    row, plane = size_i, size_i * size_j                               # flat strides of j and k
    for n in numba.prange(n_poses * n_rays):
        b, r = n // n_rays, n % n_rays
        m = voxel_from_camera[b]
        d0, d1, d2 = directions[r, 0], directions[r, 1], directions[r, 2]
        origin = (m[0, 3], m[1, 3], m[2, 3])                          # the source, in voxel indices (i, j, k)
        ray = (m[0, 0] * d0 + m[0, 1] * d1 + m[0, 2] * d2,            # voxel indices per mm
               m[1, 0] * d0 + m[1, 1] * d1 + m[1, 2] * d2,
               m[2, 0] * d0 + m[2, 1] * d1 + m[2, 2] * d2)
        near, far = np.float32(0.0), np.float32(np.inf)               # slab clip to the body box, in mm
        for a in range(3):
            if abs(ray[a]) < 1e-12:
                if origin[a] < lo[a] or origin[a] > hi[a]:
                    far = np.float32(-1.0)
            else:
                t0, t1 = (lo[a] - origin[a]) / ray[a], (hi[a] - origin[a]) / ray[a]
                near, far = max(near, min(t0, t1)), min(far, max(t0, t1))
        length = far - near
        if not length > 0:
            out[b, r] = 0.0
            continue
        count = max(2, int(math.ceil(length / step)))
        h = length / count                                            # midpoint rule, every step <= `step`
        start = near + np.float32(0.5) * h
        x0, y0, z0 = origin[0] + start * ray[0], origin[1] + start * ray[1], origin[2] + start * ray[2]
        sx, sy, sz = h * ray[0], h * ray[1], h * ray[2]
        total = np.float32(0.0)
        for s in range(count):
            x, y, z = x0 + s * sx, y0 + s * sy, z0 + s * sz
            # Samples lie inside the box, itself inside the grid: truncation is floor, the clamp only guards
            # float rounding at the grid's last voxel.
            i, j, k = min(max(int(x), 0), size_i - 2), min(max(int(y), 0), size_j - 2), min(max(int(z), 0), size_k - 2)
            fx, fy, fz = x - i, y - j, z - k
            at = k * plane + j * row + i
            c00 = mu[at] + fx * (mu[at + 1] - mu[at])
            c01 = mu[at + row] + fx * (mu[at + row + 1] - mu[at + row])
            c10 = mu[at + plane] + fx * (mu[at + plane + 1] - mu[at + plane])
            c11 = mu[at + plane + row] + fx * (mu[at + plane + row + 1] - mu[at + plane + row])
            c0 = c00 + fy * (c01 - c00)
            c1 = c10 + fy * (c11 - c10)
            total += c0 + fz * (c1 - c0)
        out[b, r] = total * h

