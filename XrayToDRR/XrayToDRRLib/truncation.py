"""Rays that pass through anatomy the CT does not hold (truncation of the CT's scan range).

A CT covers a slab of the patient; a radiograph sees more of them. Where the body touches a face of the CT
volume, the scan cut it, and the patient goes on beyond: a ray that crosses that face inside the body, or passes
the volume by beside it, went through anatomy that is in the X-ray and not in the DRR. No pose makes those pixels
agree, and the similarity rewards lining up the slab's cut edges instead of the anatomy, so registration leaves
them out (`register.OptimizerSettings.mask_cut_rays`). The body beyond a face is taken as the face's own
cross-section continued (a prism): the simplest guess that errs on the side of leaving a pixel out. Where the
whole field must count (the global search, the ranking of its candidates, the confidence), `continued` renders
the CT with that prism made material instead.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from scipy import ndimage

from .fast_render import AIR_MU, FastRenderer, _Level, _translation
from .pose import Pose

MAX_PIXELS = 64  # the mask is traced at most this finely: its edges are smooth bands, and it costs rays x samples
MIN_BODY_FRACTION = 0.002  # a face with less body than this (a few noisy voxels, the couch's edge) does not count


def cut_faces(level) -> list[tuple[int, int, np.ndarray]]:
    """(axis in i/j/k order, voxel index of the face, 2D body mask of that boundary slice) for every face across
    the patient's long axis of a fast_render pyramid level where the body touches the volume's edge: the ends of
    the scan range. Where the field of view cuts the body's side, what lies beyond is a few cm of tissue, not the
    face continued: a lateral view's every ray crosses such a face, and counting them left out 80-90 % of a
    lateral abdomen X-ray (bench/README, 2026-12-08). Cached on the level (its volume never changes)."""
    if level.cut_faces is None:
        level.cut_faces = _faces(level, 1)
    return level.cut_faces


def _faces(level, slices: int) -> list[tuple[int, int, np.ndarray]]:
    """`cut_faces`, each face's body taken from its outermost `slices` slices (any of them)."""
    mu = level.mu[0, 0].detach().cpu().numpy()  # (K, J, I), padded by one voxel of air: the CT's faces are 1, n-2
    faces = []
    for axis_kji in range(3):
        n = mu.shape[axis_kji]
        if not _across_long_axis(level.affine, 2 - axis_kji):
            continue
        for index, inward in ((1, 1), (n - 2, -1)):
            layers = [np.take(mu, index + inward * s, axis=axis_kji) for s in range(min(slices, n - 2))]
            body = np.max(layers, axis=0) > AIR_MU  # rows, cols: the other two axes, k before j before i
            if body.mean() > MIN_BODY_FRACTION:
                faces.append((2 - axis_kji, index, body))
    return faces


def cut_rays(renderer: FastRenderer, pose: Pose, level: int = 0, max_pixels: int = MAX_PIXELS,
             samples_per_voxel: float = 2.0) -> np.ndarray:
    """(H, W) bool: the pixels of `pose` whose rays pass through the body beyond a cut face of the CT, the body
    there taken as the face's cross-section continued (a prism): the rays that cross the face inside the body and
    the ones that pass the CT by, beside the face, where the patient goes on. A detector larger than `max_pixels`
    a side is traced on a coarser grid, each coarse pixel's verdict widened by one coarse pixel (conservative)."""
    factor = math.ceil(max(pose.height, pose.width) / max_pixels)
    if factor > 1:
        coarse = pose.with_detector(height=math.ceil(pose.height / factor), width=math.ceil(pose.width / factor))
        cut = ndimage.binary_dilation(cut_rays(renderer, coarse, level, max_pixels, samples_per_voxel))
        rows = np.minimum((np.arange(pose.height) + 0.5) * coarse.height / pose.height, coarse.height - 1)
        cols = np.minimum((np.arange(pose.width) + 0.5) * coarse.width / pose.width, coarse.width - 1)
        return cut[rows.astype(int)[:, None], cols.astype(int)[None, :]]
    lvl = renderer.levels[level]
    hit_any = np.zeros(pose.height * pose.width, bool)
    faces = cut_faces(lvl)
    if not faces:
        return hit_any.reshape(pose.height, pose.width)
    voxel_from_camera = np.linalg.inv(lvl.affine) @ pose.world_from_camera
    directions = renderer.ray_directions(pose).cpu().numpy().astype(np.float64) @ voxel_from_camera[:3, :3].T
    origin = voxel_from_camera[:3, 3]
    for axis, index, body in faces:
        cols_axis, rows_axis = [a for a in range(3) if a != axis]       # body's rows: the higher i/j/k axis
        beyond = (index, np.inf) if index > 1 else (-np.inf, index)      # the half-space past the face
        near, far = _slab(origin[axis], directions[:, axis], *beyond)
        near = np.maximum(near, 0.0)                                     # after the source
        for a, n in ((rows_axis, body.shape[0]), (cols_axis, body.shape[1])):  # within the face's rectangle
            lo, hi = _slab(origin[a], directions[:, a], -0.5, n - 0.5)
            near, far = np.maximum(near, lo), np.minimum(far, hi)
        todo = np.flatnonzero(far > near)
        if todo.size == 0:
            continue
        # Samples along each ray's stretch over the face: at most 1 / samples_per_voxel voxels apart in the face.
        step = np.hypot(directions[todo, rows_axis], directions[todo, cols_axis]) * (far[todo] - near[todo])
        count = max(2, int(np.ceil(step.max() * samples_per_voxel)))
        t = near[todo, None] + (far[todo] - near[todo])[:, None] * (np.arange(count) + 0.5) / count
        rows = np.clip(np.rint(origin[rows_axis] + t * directions[todo, rows_axis, None]), 0, body.shape[0] - 1)
        cols = np.clip(np.rint(origin[cols_axis] + t * directions[todo, cols_axis, None]), 0, body.shape[1] - 1)
        hit_any[todo] |= body[rows.astype(np.int64), cols.astype(np.int64)].any(1)
    return hit_any.reshape(pose.height, pose.width)


def _slab(o: float, d: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """The parameter range of each ray where lo < o + t d < hi."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = (lo - o) / d, (hi - o) / d
    parallel = d == 0
    inside = (lo < o) & (o < hi)
    near = np.where(parallel, np.where(inside, -np.inf, np.inf), np.minimum(a, b))
    far = np.where(parallel, np.where(inside, np.inf, -np.inf), np.maximum(a, b))
    return near, far


def continued(renderer: FastRenderer, margin_mm: float, levels) -> FastRenderer:
    """A renderer whose pyramid levels `levels` (indices) hold the body continued `margin_mm` beyond every cut face
    across the patient's long axis, as that face's cross-section (the prism model above, made material); its other
    levels are `renderer`'s. What is compared with an X-ray that sees the patient beyond the CT when all of the
    field must count (the global search, the ranking of its candidates, the confidence): a DRR of the CT alone is
    air there, so whole-image similarities favour the pose that magnifies the slab to fill the X-ray; the prism's
    gross thickness is about right and wrong only in detail (the faces are `cut_faces`'s: not the body's sides).
    `renderer` itself is untouched."""
    extended = copy.copy(renderer)
    extended.levels = list(renderer.levels)
    for n in levels:
        extended.levels[n] = _continued_level(renderer.levels[n], margin_mm)
    return extended


def field_width(pose: Pose, point) -> float:
    """The detector's larger side projected to `point`'s depth (mm): past a cut face near `point`, `continued`
    must go on about this far for the rays of `pose` (twice it covers the rays' spread through a thick body)."""
    depth = max(float(pose.depth(np.asarray(point, dtype=np.float64))[0]), 1.0)
    return max(pose.height * pose.dely, pose.width * pose.delx) * depth / pose.sdd


def _continued_level(lvl, margin_mm: float):
    # Two slices deep: a pooled level's far slice may be a block padded with air, too faint to count as body.
    faces = _faces(lvl, 2)
    if not faces or margin_mm <= 0:
        return lvl
    mu = lvl.mu[0, 0][1:-1, 1:-1, 1:-1]                  # (K, J, I) without the level's one voxel of air
    affine = lvl.affine @ _translation(np.ones(3))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)     # (i, j, k)
    shift = np.zeros(3)
    for axis, index, _ in faces:
        dim = 2 - axis
        n = int(math.ceil(margin_mm / spacing[axis]))
        low = index == 1
        # The face slice and the next, at their denser, replace the face slice and go on past it (a half-air far
        # block would leave a gap of low attenuation between the CT and its continuation).
        size = mu.shape[dim]
        edge = torch.maximum(*[mu.narrow(dim, k if low else size - 1 - k, 1) for k in (0, 1)])
        repeat = [1, 1, 1]
        repeat[dim] = n + 1
        inner = mu.narrow(dim, 1 if low else 0, size - 1)
        mu = torch.cat([edge.repeat(*repeat), inner] if low else [inner, edge.repeat(*repeat)], dim)
        if low:
            shift[axis] -= n
    extended = _Level(mu.contiguous(), affine @ _translation(shift))
    extended.half = lvl.half
    return extended


def _across_long_axis(affine: np.ndarray, axis: int) -> bool:
    """Whether voxel axis `axis` (i, j or k) runs along the patient's superior-inferior (RAS z) axis."""
    column = affine[:3, axis]
    return abs(column[2]) > np.linalg.norm(column) * math.cos(math.radians(45))
