"""A renderer that prepares a volume once and renders many poses cheaply (preview, HQ, gradients, batches).

Why it is fast: attenuation lives in a multi-resolution pyramid (box-filtered, so coarse levels are anti-aliased);
each render picks the level whose voxels match the detector pixel footprint at the volume; rays are clipped to
the bounding box of the non-air voxels; samples are spaced by the level's voxel size along each pose's longest
chord; everything is float32 and sampled with one `grid_sample` call per chunk of rays. Trilinear line integrals
(midpoint rule), in mm x 1/mm.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from . import fused_render, numba_gradient, numba_render
from .errors import InputError
from .pose import Pose
from .render import MU_WATER_PER_MM, hu_to_mu, pick_device
from .volumes import ras_affine

MODES = ("preview", "hq", "full")
AIR_MU = 0.5 * MU_WATER_PER_MM  # below -500 HU a voxel counts as air for ray clipping: CT air is noisy


class _Level:
    """One pyramid level: attenuation as a (1,1,K,J,I) tensor (SimpleITK's array order, which is grid_sample's),
    its world -> grid_sample-coordinate matrix and the grid-coordinate box that holds every non-air voxel."""

    def __init__(self, mu_kji: torch.Tensor, affine: np.ndarray):
        # One voxel of air around the volume: rays are clipped where the integrand is exactly 0, so the integral
        # does not depend on where they are clipped, even where the CT cuts through the body.
        mu_kji = F.pad(mu_kji, (1, 1, 1, 1, 1, 1))
        affine = affine @ _translation([-1.0, -1.0, -1.0])
        self.mu = mu_kji[None, None]
        self.shape = np.array(mu_kji.shape[::-1])  # (I, J, K), matching `affine`'s index order
        self.affine = affine
        self.voxel = float(np.min(np.linalg.norm(affine[:3, :3], axis=0)))
        to_grid = np.eye(4)  # voxel index -> [-1, 1] (align_corners=True: -1 and 1 are the edge voxels' centres)
        to_grid[:3, :3] = np.diag(2.0 / np.maximum(self.shape - 1, 1))
        to_grid[:3, 3] = -1.0
        self.grid_from_world = torch.as_tensor(to_grid @ np.linalg.inv(affine), dtype=torch.float32,
                                               device=mu_kji.device)
        lo, hi = _occupied_range(mu_kji > AIR_MU)
        # The (thin, noisy) air outside the body box is set to exactly 0, so the box's faces are layers of zeros:
        # every backend clips rays there without losing anything.
        for axis, (first, last) in enumerate(zip(lo[::-1], hi[::-1])):  # k, j, i
            mu_kji.narrow(axis, 0, first).zero_()
            mu_kji.narrow(axis, last + 1, mu_kji.shape[axis] - last - 1).zero_()
        self.lo, self.hi = (lo - 1).clip(0, self.shape - 1), (hi + 1).clip(0, self.shape - 1)  # voxel indices
        box = np.stack([self.lo, self.hi]) * 2.0 / np.maximum(self.shape - 1, 1) - 1.0
        self.box = torch.as_tensor(box, dtype=torch.float32, device=mu_kji.device)
        self.fused = None  # the level as the triton backend reads it, made on first use
        self.half = False  # a level at 1.5 x 2^n the finest voxel (FastRenderer's half_levels)
        self.cut_faces = None  # truncation.cut_faces of this level, made on first use


def _occupied_range(occupied_kji: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(i, j, k) index ranges holding True voxels (the whole grid when none does)."""
    lo, hi = [], []
    for dims in ((0, 1), (0, 2), (1, 2)):  # reduce to the i, then j, then k axis
        hits = torch.nonzero(occupied_kji.any(dim=dims[1]).any(dim=dims[0])).flatten()
        size = occupied_kji.shape[2 - len(lo)]
        lo.append(int(hits.min()) if len(hits) else 0)
        hi.append(int(hits.max()) if len(hits) else size - 1)
    return np.array(lo), np.array(hi)


def _translation(offset) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = offset
    return m


def _pool(mu_kji: torch.Tensor, affine: np.ndarray, factors_ijk) -> tuple[torch.Tensor, np.ndarray]:
    """Box-filter and subsample by integer factors per axis; air (0) pads the far edges to whole blocks."""
    fk, fj, fi = factors_ijk[::-1]
    pads = [(-n) % f for n, f in zip(mu_kji.shape, (fk, fj, fi))]
    padded = F.pad(mu_kji[None, None], (0, pads[2], 0, pads[1], 0, pads[0]))
    pooled = F.avg_pool3d(padded, kernel_size=(fk, fj, fi), stride=(fk, fj, fi))[0, 0]
    step = np.eye(4)
    step[:3, :3] = np.diag(factors_ijk)
    step[:3, 3] = (np.array(factors_ijk) - 1) / 2.0  # new voxel 0's centre = centre of the old block
    return pooled, affine @ step


def _area_resample(mu_kji: torch.Tensor, affine: np.ndarray, factors_ijk) -> tuple[torch.Tensor, np.ndarray]:
    """Coarsen by fractional factors per axis (each made a ratio p/q of small integers): each new voxel is the
    overlap-weighted mean of the old voxels it covers (a box filter of its own width), its centre where `_pool`
    puts it; air pads the far edges. Every q new voxels cover p old ones with the same weights, so each axis is a
    few strided multiply-adds (an index gather per tap took 5x as long on a 512^2 CT)."""
    ratios = [Fraction(float(f)).limit_denominator(4) for f in factors_ijk]
    # i, j, k are the tensor's last, middle, first axes: the last goes last, when the others have shrunk it
    # (its blocks are strided within rows, the others' are whole rows).
    for axis, ratio in ((1, ratios[1]), (0, ratios[2]), (2, ratios[0])):
        p, q = ratio.numerator, ratio.denominator
        if p == q:
            continue
        n = mu_kji.shape[axis]
        blocks = math.ceil(n / p)
        pad = [0, 0] * (2 - axis) + [0, blocks * p - n]
        old = F.pad(mu_kji, pad).reshape(mu_kji.shape[:axis] + (blocks, p) + mu_kji.shape[axis + 1:])
        new = old.new_zeros(mu_kji.shape[:axis] + (blocks, q) + mu_kji.shape[axis + 1:])
        for r in range(q):  # new voxel r of a block covers old [r p / q, (r + 1) p / q)
            lo, hi = Fraction(r * p, q), Fraction((r + 1) * p, q)
            for t in range(math.floor(lo), math.ceil(hi)):
                weight = float((min(hi, t + 1) - max(lo, t)) / (hi - lo))
                new.select(axis + 1, r).add_(old.select(axis + 1, t), alpha=weight)
        mu_kji = new.reshape(mu_kji.shape[:axis] + (blocks * q,) + mu_kji.shape[axis + 1:]).narrow(
            axis, 0, math.ceil(n * q / p)).contiguous()
    factors = np.array([float(r) for r in ratios])
    step = np.eye(4)
    step[:3, :3] = np.diag(factors)
    step[:3, 3] = (factors - 1) / 2.0  # new voxel 0's centre = centre of the old block
    return mu_kji, affine @ step


class FastRenderer:
    """Render canonical poses of one volume: `render(poses, mode)` for images, `render_tensor` for gradients.
    `attenuation` (1/mm) and `mask` are (i, j, k) arrays like `volumes.array_ijk`; by default the CT's HU are
    converted with `render.hu_to_mu`. The pyramid: `n_levels` levels at 2^n times the finest voxel and, with
    `half_levels`, the levels at 1.5 x 2^n between them (sorted by voxel size; 30-45 % of the finest level's memory).

    Backends (`self.backend`, recorded in outputs' metadata): 'torch' samples with `grid_sample` (CPU and CUDA);
    'triton' is nanodrr's fused CUDA kernel (see fused_render); 'numba' compiled per-ray loops on the CPU (see
    numba_render; a pose that needs a gradient is summed over the torch path's samples by numba_gradient); 'auto'
    takes triton on CUDA and numba on the CPU when they import."""

    def __init__(self, volume: sitk.Image, mask: np.ndarray | None = None, device: str | torch.device = "auto",
                 attenuation: np.ndarray | None = None, n_levels: int = 5, chunk_samples: int = 2 ** 22,
                 preview_budget: int = 2 ** 19, backend: str = "auto", half_levels: bool = True):
        self.device = pick_device(device)
        try:
            self.backend = fused_render.pick_backend(backend, self.device)
        except ValueError as err:
            raise InputError(str(err), None, "use --backend torch (or auto)") from None
        if attenuation is None:
            mu = hu_to_mu(sitk.GetArrayViewFromImage(volume))  # already (k, j, i): no transpose copy
        else:
            mu = np.asarray(attenuation, np.float32).transpose(2, 1, 0)
        if mask is not None:
            mu = mu * np.asarray(mask).transpose(2, 1, 0)
        affine = ras_affine(volume)
        level = torch.from_numpy(np.ascontiguousarray(mu, dtype=np.float32)).to(self.device)
        self.levels = [_Level(level, affine)]
        finest = np.linalg.norm(affine[:3, :3], axis=0).min()
        finest_level, finest_affine = level, affine
        for n in range(1, n_levels):
            # Each level doubles the finest voxel size; axes already that coarse are kept.
            current = np.linalg.norm(affine[:3, :3], axis=0)
            factors = tuple(max(1, int(round(finest * 2 ** n / c))) for c in current)
            if max(factors) == 1 or min(level.shape) < 4:
                break
            level, affine = _pool(level, affine, factors)
            self.levels.append(_Level(level, affine))
        # Between those, levels at 1.5 x 2^n the finest voxel: HQ takes the coarsest level within two pixel
        # footprints, so with powers of two alone it traced up to twice the samples it needs (a 0.98 mm CT seen at
        # 0.78 mm footprints took its original voxels); with these, at most 1.33 times.
        level, affine, spacing = finest_level, finest_affine, np.linalg.norm(finest_affine[:3, :3], axis=0)
        for n in range(n_levels - 1 if half_levels else 0):
            current = np.linalg.norm(affine[:3, :3], axis=0)
            factors = np.maximum(spacing, finest * 1.5 * 2 ** n) / current
            if factors.max() < 1.01 or min(level.shape) < 4:
                break
            level, affine = _area_resample(level, affine, factors)
            self.levels.append(_Level(level, affine))
            self.levels[-1].half = True
        self.levels.sort(key=lambda lvl: lvl.voxel)
        self.chunk_samples = chunk_samples  # 2^22 (a 48 MB grid): few thread sync points, costly on a loaded CPU
        self.preview_budget = preview_budget
        self._directions: tuple | None = None  # (detector, its unit ray directions): most calls reuse one detector

    # --- level and sampling choice ------------------------------------------------------------------------
    def footprint(self, pose: Pose) -> float:
        """Detector pixel size projected back to the volume's centre (mm)."""
        lvl = self.levels[0]
        middle = lvl.affine @ np.append((lvl.shape - 1) / 2.0, 1.0)
        depth = max(float(pose.depth(middle[:3])[0]), 1e-3)
        return min(pose.delx, pose.dely) * depth / pose.sdd

    def plan(self, pose: Pose, mode: str = "preview", half_levels: bool = True) -> tuple[int, int]:
        """(level, ray stride), decided from the detector pixel footprint at the volume, never from the CT itself;
        `half_levels=False` chooses among the power-of-two levels alone.

        full: the original voxels, every pixel traced. hq: the coarsest level whose (box-filtered) voxels are no
        larger than two pixel footprints, i.e. all the detail the detector can sample (its Nyquist limit), every
        pixel traced. preview: the finest level whose cost fits `preview_budget` samples, with about one ray per
        voxel (the rays between are interpolated: a coarse level holds no finer detail)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        fp = self.footprint(pose)
        if mode == "full":
            return 0, 1
        if mode == "hq":
            fits = [n for n, lvl in enumerate(self.levels)
                    if lvl.voxel <= 2.0 * fp * 1.01 and (half_levels or not lvl.half)]
            return (max(fits) if fits else 0), 1
        for n, lvl in enumerate(self.levels):
            stride = max(1, int(lvl.voxel / fp))
            rays = math.ceil(pose.height / stride) * math.ceil(pose.width / stride)
            if rays * self._max_chord(lvl) / lvl.voxel <= self.preview_budget:
                return n, stride
        return len(self.levels) - 1, max(1, int(self.levels[-1].voxel / fp))

    # --- rendering ------------------------------------------------------------------------------------------
    def render(self, poses: Pose | list[Pose], mode: str = "preview") -> np.ndarray:
        """(H,W) for one pose, (B,H,W) for a batch of poses sharing one detector."""
        single = isinstance(poses, Pose)
        poses = [poses] if single else list(poses)
        matrices = torch.as_tensor(np.stack([p.world_from_camera for p in poses]), dtype=torch.float32,
                                   device=self.device)
        level, stride = self.plan(poses[0], mode)
        step = 0.5 if mode == "full" else 1.0  # full: two samples per voxel, close to exact (Siddon) integrals
        with torch.no_grad():
            images = self.render_tensor(matrices, poses[0], level, stride, step).cpu().numpy()
        return images[0] if single else images

    def render_tensor(self, world_from_camera: torch.Tensor, pose: Pose, level: int = 0, stride: int = 1,
                      step_factor: float = 1.0) -> torch.Tensor:
        """Differentiable in `world_from_camera` (B,4,4): (B,H,W) line integrals for `pose`'s detector, traced
        every `stride` pixels (same field of view) and bilinearly resized to the full detector."""
        if stride > 1:
            coarse = pose.with_detector(height=math.ceil(pose.height / stride), width=math.ceil(pose.width / stride))
            small = self.render_tensor(world_from_camera, coarse, level, 1, step_factor)
            return F.interpolate(small[:, None], size=(pose.height, pose.width), mode="bilinear",
                                 align_corners=False)[:, 0]
        lvl = self.levels[level]
        dirs = self._camera_directions(pose)                                       # (R,3) unit, camera frame
        if self.backend == "triton":
            if lvl.fused is None:
                lvl.fused = fused_render.FusedLevel(lvl, self._max_chord(lvl))
            values = lvl.fused.render(world_from_camera.float(), dirs, pose.width, step_factor)
            return values.reshape(-1, pose.height, pose.width)
        if self.backend == "numba" and not (torch.is_grad_enabled() and world_from_camera.requires_grad):
            values = numba_render.render_level(lvl, world_from_camera, dirs, step_factor)
            return values.reshape(-1, pose.height, pose.width)
        rot, src = world_from_camera[:, :3, :3], world_from_camera[:, :3, 3]
        g_rot, g_t = lvl.grid_from_world[:3, :3], lvl.grid_from_world[:3, 3]
        # Tiny products are written elementwise: MKL's threaded matmul stalls for ~15 ms on a busy 2-core machine.
        to_grid = (g_rot[None, :, :, None] * rot[:, None, :, :]).sum(2)              # (B,3,3) camera -> grid
        origin = (g_rot * src[:, None, :]).sum(-1) + g_t                            # (B,3) source in grid coords
        direction = (to_grid[:, None, :, :] * dirs[None, :, None, :]).sum(-1)       # (B,R,3) grid units per mm
        # The gradient flows through the clip distances too, as the samples move with them: with the samples held
        # still, the along-ray derivatives of the interpolated volume sum to 0 only in the limit of fine sampling,
        # and the pose gradient along the beam was off by 30-200 % (wrong-signed for some views) at 1-2 samples
        # per voxel. Costs under 10 % of an iteration.
        near, far = _clip_to_box(origin[:, None, :], direction, lvl.box)            # (B,R) mm along each ray
        length = (far - near).clamp(min=0.0)
        b, r = length.shape
        flat_o = origin[:, None, :].expand(b, r, 3).reshape(-1, 3)
        flat_d, flat_near, flat_len = direction.reshape(-1, 3), near.reshape(-1), length.reshape(-1)
        # Each pose takes as many samples as its longest chord through the body box needs (not the box's
        # diagonal: about half the samples for a chest seen AP). The count is per pose, never per chunk, so a
        # pose renders the same alone or in a batch. 3D grid_sample on the CPU runs one thread per batch item,
        # so the samples go in `split` batch items (the counts are multiples of it).
        split = torch.get_num_threads() if lvl.mu.device.type == "cpu" else 1
        counts = [math.ceil(max(2.0, longest / (lvl.voxel * step_factor)) / split) * split
                  for longest in length.detach().amax(1).tolist()]
        if self.backend == "numba":  # the pose needs a gradient: the same samples summed by compiled loops
            per_ray = torch.tensor(counts, dtype=torch.int64).repeat_interleave(r)
            start = (flat_o + flat_near[:, None] * flat_d).contiguous()
            values = numba_gradient.line_integrals(start, (flat_len[:, None] * flat_d).contiguous(), flat_len,
                                                   per_ray, lvl)
            return values.reshape(b, pose.height, pose.width)
        per_chunk = max(1, self.chunk_samples // max(counts))
        out = []
        for first in range(0, b * r, per_chunk):
            sl = slice(first, min(first + per_chunk, b * r))
            poses = range(first // r, (sl.stop - 1) // r + 1)
            n_samples = max(counts[p] for p in poses)
            k = torch.arange(n_samples, device=self.device, dtype=torch.float32)[:, None] + 0.5
            if len(poses) == 1:
                frac, keep, n_ray = k / n_samples, None, n_samples                   # (S,1), shared by all rays
            else:  # a chunk of small images from several poses: each ray keeps its own pose's count
                n_ray = torch.repeat_interleave(torch.tensor([counts[p] for p in poses], device=self.device,
                                                             dtype=torch.float32),
                                                torch.tensor([min(sl.stop, (p + 1) * r) - max(first, p * r)
                                                              for p in poses], device=self.device))
                frac, keep = (k / n_ray).repeat_interleave(3, dim=1), (k < n_ray).float()  # (S,C*3), (S,C)
            # Sample-major points (S, C*3): neighbouring rays at one depth read neighbouring voxels, and one
            # fused op runs over long contiguous rows (a trailing dimension of 3 does not vectorise).
            start = (flat_o[sl] + flat_near[sl, None] * flat_d[sl]).reshape(1, -1)   # (1,C*3) grid coords
            delta = (flat_len[sl, None] * flat_d[sl]).reshape(1, -1)                 # (1,C*3) entry -> exit
            grid = torch.addcmul(start, frac, delta).reshape(split, 1, n_samples // split, -1, 3)
            samples = F.grid_sample(lvl.mu.expand(split, -1, -1, -1, -1), grid, mode="bilinear",
                                    padding_mode="zeros", align_corners=True)        # (split,1,1,S/split,C)
            if keep is not None:
                samples = samples * keep.reshape(samples.shape)
            out.append(samples.sum((0, 1, 2, 3)) * flat_len[sl] / n_ray)
        values = torch.cat(out)
        return values.reshape(b, pose.height, pose.width)

    def ray_directions(self, pose: Pose) -> torch.Tensor:
        """(H*W, 3) unit ray directions of `pose`'s detector pixels in its camera frame, row-major."""
        return self._camera_directions(pose)

    def _camera_directions(self, pose: Pose) -> torch.Tensor:
        detector = (pose.height, pose.width, pose.delx, pose.dely, pose.x0, pose.y0, pose.sdd)
        if self._directions is None or self._directions[0] != detector:
            self._directions = (detector, self._directions_of(pose))
        return self._directions[1]

    def _directions_of(self, pose: Pose) -> torch.Tensor:
        rows, cols = torch.meshgrid(torch.arange(pose.height, dtype=torch.float32),
                                    torch.arange(pose.width, dtype=torch.float32), indexing="ij")
        x = (cols - (pose.width - 1) / 2) * pose.delx + pose.x0
        y = (rows - (pose.height - 1) / 2) * pose.dely + pose.y0
        d = torch.stack([x, y, torch.full_like(x, pose.sdd)], -1).reshape(-1, 3)
        return (d / d.norm(dim=-1, keepdim=True)).to(self.device)

    def _max_chord(self, lvl: _Level) -> float:
        """Longest straight line through the occupied box, in mm."""
        return float(np.linalg.norm(lvl.affine[:3, :3] @ (lvl.hi - lvl.lo))) + lvl.voxel


def _clip_to_box(origin: torch.Tensor, direction: torch.Tensor, box: torch.Tensor):
    """Slab method: entry and exit distances (mm) of rays with the axis-aligned box [box[0], box[1]]."""
    inv = 1.0 / torch.where(direction.abs() < 1e-12, torch.full_like(direction, 1e-12), direction)
    t0 = (box[0] - origin) * inv
    t1 = (box[1] - origin) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far
