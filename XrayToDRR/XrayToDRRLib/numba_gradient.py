"""The numba backend's differentiable path: the torch path's trilinear midpoint sums, and their derivatives, in two
compiled loops, so that a registration iteration on the CPU skips `grid_sample`'s forward and backward (about
80 % of a registration's time with the torch path: bench/README.md, issue 14).

`line_integrals(start, delta, length, counts, level)`: ray i sums the level's trilinear volume at `counts[i]`
midpoints between the grid coordinates `start[i]` and `start[i] + delta[i]` (grid_sample's [-1, 1] frame with
align_corners=True) and multiplies by `length[i] / counts[i]`: the torch path's samples and sum, so the image and
the optimiser's path are the torch path's. It is differentiable in `start`, `delta` and `length` (not in the
volume), so the torch code before it (pose -> rays -> clip distances) keeps its autograd graph.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from . import numba_render

numba = _axis = _samples = _trilinear = None  # set by _kernels(): the loops' globals are resolved when they compile
EDGE = 1e-3   # samples stay this many voxels inside the grid's last index, so index + 1 is on it


@functools.cache
def _kernels():
    global numba, _axis, _samples, _trilinear
    numba = numba_render._kernels()[0]  # also picks the fork-safe threading layer
    _trilinear = numba_render._trilinear
    _axis = numba.njit(fastmath=True, cache=True)(_axis_impl)
    _samples = numba.njit(fastmath=True, cache=True)(_samples_impl)
    compile = numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
    return compile(_forward_impl), compile(_backward_impl)


def _setup(level, start, delta, counts):
    mu = level.mu[0, 0].detach().contiguous().numpy()  # (K,J,I) float32, shared with the tensor
    shape = np.array(mu.shape[::-1], np.int64)            # (I, J, K): grid x, y, z
    as32 = lambda t: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)  # noqa: E731
    return mu.reshape(-1), shape, as32(start), as32(delta), np.ascontiguousarray(counts.numpy(), dtype=np.int64)


class _LineIntegrals(torch.autograd.Function):
    @staticmethod
    def forward(ctx, start, delta, length, counts, level):
        mu, shape, s, d, n = _setup(level, start, delta, counts)
        scale = (length.detach().cpu().double() / counts.double()).float().numpy()
        out = np.empty(len(n), np.float32)
        forward, _ = _kernels()
        with numba_render._LOCK:
            numba_render.set_threads()
            forward(mu, shape, s, d, n, scale, out)
        ctx.save_for_backward(start, delta, length, counts)
        ctx.level = level
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad):
        start, delta, length, counts = ctx.saved_tensors
        mu, shape, s, d, n = _setup(ctx.level, start, delta, counts)
        weight = (grad.detach().cpu().double() * length.detach().cpu().double() / counts.double()).float().numpy()
        g_start, g_delta = np.empty_like(s), np.empty_like(d)
        sums = np.empty(len(n), np.float32)
        _, backward = _kernels()
        with numba_render._LOCK:
            numba_render.set_threads()
            backward(mu, shape, s, d, n, weight, g_start, g_delta, sums)
        g_length = grad * torch.from_numpy(sums) / counts.to(grad.dtype)
        return torch.from_numpy(g_start), torch.from_numpy(g_delta), g_length, None, None


def line_integrals(start: torch.Tensor, delta: torch.Tensor, length: torch.Tensor, counts: torch.Tensor,
                   level) -> torch.Tensor:
    """(N,) sums along N rays (see the module's docstring); `start`, `delta` (N,3), `length` (N,) float32 on the
    CPU, `counts` (N,) int64 samples per ray."""
    return _LineIntegrals.apply(start, delta, length, counts, level)


def _axis_impl(start, delta, size, n):
    """First sample and step (voxel indices) along one grid axis of `size` voxels, for a ray of `n` midpoint
    samples; the first and last samples are clamped into the grid, so every sample between is on it (a straight
    segment between two points of a box stays in it) and its index + 1 too."""
    half, top = np.float32(0.5 * (size - 1)), np.float32(size - 1 - EDGE)
    first = (start + 1) * half + delta * half * np.float32(0.5) / np.float32(n)
    last = (start + 1) * half + delta * half * (np.float32(n) - np.float32(0.5)) / np.float32(n)
    first, last = min(max(first, np.float32(0.0)), top), min(max(last, np.float32(0.0)), top)
    return first, (last - first) / np.float32(max(n - 1, 1))


def _samples_impl(start, delta, shape, n):
    """(x0, sx, y0, sy, z0, sz): a ray's first sample and step along the grid's three axes."""
    x0, sx = _axis(start[0], delta[0], shape[0], n)
    y0, sy = _axis(start[1], delta[1], shape[1], n)
    z0, sz = _axis(start[2], delta[2], shape[2], n)
    return x0, sx, y0, sy, z0, sz


def _forward_impl(mu, shape, start, delta, counts, scale, out):
    row, plane = shape[0], shape[0] * shape[1]
    for r in numba.prange(out.shape[0]):
        n = counts[r]
        x0, sx, y0, sy, z0, sz = _samples(start[r], delta[r], shape, n)
        total = np.float32(0.0)
        for k in range(n):
            x, y, z = x0 + k * sx, y0 + k * sy, z0 + k * sz
            i, j, m = int(x), int(y), int(z)                          # inside the grid: truncation is floor
            total += _trilinear(mu, m * plane + j * row + i, x - i, y - j, z - m, row, plane)
        out[r] = total * scale[r]


def _backward_impl(mu, shape, start, delta, counts, weight, g_start, g_delta, sums):
    """Per ray: the sum of the samples (for d/d length) and of their index-space gradients, plain and weighted by
    each sample's fraction along the ray (d/d start and d/d delta), chained to grid coordinates."""
    row, plane = shape[0], shape[0] * shape[1]
    half = (np.float32(0.5 * (shape[0] - 1)), np.float32(0.5 * (shape[1] - 1)), np.float32(0.5 * (shape[2] - 1)))
    for r in numba.prange(sums.shape[0]):
        n = counts[r]
        x0, sx, y0, sy, z0, sz = _samples(start[r], delta[r], shape, n)
        step = np.float32(1.0) / np.float32(n)
        total = np.float32(0.0)
        gx = gy = gz = hx = hy = hz = np.float32(0.0)
        for k in range(n):
            x, y, z = x0 + k * sx, y0 + k * sy, z0 + k * sz
            f = (np.float32(k) + np.float32(0.5)) * step
            i, j, m = int(x), int(y), int(z)
            fx, fy, fz = x - i, y - j, z - m
            at = m * plane + j * row + i
            d00 = mu[at + 1] - mu[at]                                   # differences along x
            d01 = mu[at + row + 1] - mu[at + row]
            d10 = mu[at + plane + 1] - mu[at + plane]
            d11 = mu[at + plane + row + 1] - mu[at + plane + row]
            c00, c01 = mu[at] + fx * d00, mu[at + row] + fx * d01
            c10, c11 = mu[at + plane] + fx * d10, mu[at + plane + row] + fx * d11
            c0, c1 = c00 + fy * (c01 - c00), c10 + fy * (c11 - c10)
            e0, e1 = d00 + fy * (d01 - d00), d10 + fy * (d11 - d10)
            vx = e0 + fz * (e1 - e0)
            vy = (c01 - c00) + fz * ((c11 - c10) - (c01 - c00))
            vz = c1 - c0
            total += c0 + fz * vz
            gx += vx
            gy += vy
            gz += vz
            hx += f * vx
            hy += f * vy
            hz += f * vz
        w = weight[r]
        g_start[r, 0], g_start[r, 1], g_start[r, 2] = w * gx * half[0], w * gy * half[1], w * gz * half[2]
        g_delta[r, 0], g_delta[r, 1], g_delta[r, 2] = w * hx * half[0], w * hy * half[1], w * hz * half[2]
        sums[r] = total
