"""Global pose search: a C-arm pose from a view name (or the DICOM's C-arm angles) alone, with neither the true
pose nor a trained model.

A C-arm varies six things: two view angles, the rotation about the beam, the source-to-patient distance
(magnification) and the patient's in-plane offset (two). Brute force over six dimensions is out of reach on a CPU;
the structure of the projection is used instead:

- view direction: a grid of directions about the nominal view (`angle_range_deg` in `angle_step_deg` steps about
  the two axes of the image plane, rotating about the volume centre). Per direction, one DRR per reference distance
  is rendered (FastRenderer preview mode, one batch) on a *canvas*: a detector larger than the X-ray, so the
  anatomy that an off-centre patient brings into the X-ray's field is on it;
- distance: a few reference distances spread geometrically over `distance_mm`; between them the X-ray is rescaled
  in 2D (perspective changes little within +-15 % of a reference);
- rotation about the beam: the X-ray is rotated in 2D;
- in-plane offset: masked normalised cross-correlation of every rescaled, rotated X-ray against every canvas at all
  shifts at once (FFT; masked NCC after Padfield 2012), within `shift_mm` of the volume centre.

Geometry (camera axes of a canvas C at distance d_r; X-ray camera X = C spun by theta about the beam, source moved by
(a, b) in C's image plane and to distance d): a point of the object plane through the volume centre lands at canvas
detector position y = SDD (a, b) / d_r + (d / d_r) R(theta) x, where x is its X-ray detector position (mm from the
principal point). So each X-ray template is the X-ray resampled by y -> x, and the correlation peak gives (a, b).

The best hypotheses that are distinct poses (non-maximum suppression) are the candidates; `refine_candidates`
runs the registration optimiser briefly at coarse scales on each, so a wrong basin that happened to score well in
the search loses to the right one once both are refined.

A CT shorter than the X-ray's field (truncation): the canvases and the refinement render the CT with the body
continued past its scan range's ends (XrayToDRRLib.truncation.continued), and the refinement compares the whole
field. Against a DRR of the CT alone (air past its ends) the search favoured the largest magnification, and with
the cut rays left out the refinement kept 25-40 % of a lateral field and ranked the basins at random. On the
bench's pelvis (a 150 mm CT; cases of seed 7) 0 of 6 poses were found without the continuation, 6 of 6 with it.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.pose import Pose
from XrayToDRRLib.progress import Progress
from XrayToDRRLib.truncation import continued, field_width

from .preprocess import PreparedXray, downsampled, stage_detector

MAX_REFERENCE_RATIO = 1.3   # consecutive reference distances; the X-ray is rescaled by at most sqrt(1.3) = 1.14
SCALE_STEP = 1.055          # relative magnification step between templates (a 48 px image moves < 1.5 px)
DIRECTION_CHUNK = 6         # canvases correlated at once (bounds the memory of the FFT products)


@dataclasses.dataclass
class SearchSettings:
    """What the search covers (defaults: the range of an ordinary C-arm, not of any one CT)."""

    angle_range_deg: float = 30.0
    angle_step_deg: float = 10.0
    spin_range_deg: float = 30.0
    spin_step_deg: float = 10.0
    distance_mm: tuple[float, float] = (500.0, 1100.0)
    shift_mm: float = 60.0
    pixels: int = 48
    top_k: int = 4  # with several views (auto) the best of each other view is added
    # Render the canvases with the body continued past the CT's cut faces (XrayToDRRLib.truncation.continued); off
    # with --keep-cut-rays, which treats the CT as the whole patient.
    continue_cut_faces: bool = True

    def check(self) -> None:
        lo, hi = self.distance_mm
        if not (0 < lo < hi and math.isfinite(hi)):
            raise InputError(f"--search-distance must be two increasing positive distances, got {self.distance_mm}",
                             None, "e.g. --search-distance 500,1100")
        for name in ("angle_range_deg", "spin_range_deg", "shift_mm"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise InputError(f"{name} must be a non-negative number, got {getattr(self, name)}")
        if self.angle_step_deg <= 0 or self.spin_step_deg <= 0 or self.top_k < 1 or self.pixels < 16:
            raise InputError("search steps must be positive, top_k >= 1 and pixels >= 16")


@dataclasses.dataclass
class Candidate:
    """One distinct pose hypothesis of the search."""

    pose: Pose
    view: str
    tilt_deg: tuple[float, float]   # about the nominal camera's y (rows) and x (columns) axes
    spin_deg: float
    distance_mm: float
    shift_mm: tuple[float, float]
    score: float                    # masked NCC of the search
    refined_pose: Pose | None = None
    refined_score: float | None = None  # the optimiser's similarity after the short refinement

    def to_dict(self) -> dict:
        return {"view": self.view, "tilt_deg": [round(float(v), 2) for v in self.tilt_deg],
                "spin_deg": round(float(self.spin_deg), 2), "distance_mm": round(float(self.distance_mm), 1),
                "shift_mm": [round(float(v), 1) for v in self.shift_mm], "score": round(float(self.score), 5),
                "refined_score": None if self.refined_score is None else round(float(self.refined_score), 5),
                "pose": (self.refined_pose or self.pose).to_dict()}


@dataclasses.dataclass
class SearchResult:
    candidates: list[Candidate]
    seconds: float
    hypotheses: int
    renders: int

    def summary(self) -> dict:
        return {"seconds": round(self.seconds, 3), "hypotheses": self.hypotheses, "renders": self.renders,
                "candidates": [c.to_dict() for c in self.candidates]}


def distance_range(settings: SearchSettings, sdd: float) -> tuple[float, float]:
    """The searched source-to-patient distances: `distance_mm`, within what the SDD allows (the patient's middle
    lies at least 50 mm before the detector and 30 % of the SDD after the source)."""
    lo = max(settings.distance_mm[0], 0.3 * sdd)
    hi = min(settings.distance_mm[1], sdd - 50.0)
    if hi <= lo:
        lo, hi = 0.3 * sdd, max(0.3 * sdd + 1.0, sdd - 50.0)
    return lo, hi


def _steps(half_range: float, step: float) -> np.ndarray:
    n = int(math.floor(half_range / step + 1e-9))
    return np.arange(-n, n + 1) * step


def _rot(axis: int, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    m = np.eye(3)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def camera(nominal: Pose, center, tilt=(0.0, 0.0), spin: float = 0.0, distance: float | None = None,
           shift=(0.0, 0.0)) -> np.ndarray:
    """world_from_camera of a hypothesis: the nominal camera (which looks at `center`) turned about `center` by
    `tilt` (degrees about its own y then x axis), spun by `spin` about its beam, its source at `distance` from
    `center` along the beam and moved by `shift` (mm) in the unspun image plane."""
    center = np.asarray(center, dtype=np.float64)
    r0 = nominal.rotation
    r = r0 @ _rot(1, tilt[0]) @ _rot(0, tilt[1])
    d = float(nominal.depth(center)[0]) if distance is None else float(distance)
    m = np.eye(4)
    m[:3, :3] = r @ _rot(2, spin)
    m[:3, 3] = center - d * r[:, 2] + r[:, 0] * shift[0] + r[:, 1] * shift[1]
    return m


# --- templates -----------------------------------------------------------------------------------------------------
def _search_images(prepared: PreparedXray, pixels: int, device) -> tuple[Pose, torch.Tensor, torch.Tensor]:
    """The X-ray (and its field mask, 1 where compared) at about `pixels` along the longer side."""
    small, image, mask = downsampled(prepared, pixels, device)
    mask = torch.ones_like(image) if mask is None else mask
    return small, image[0, 0], mask[0, 0]


def _canvas_size(small: Pose, scales: np.ndarray, spins: np.ndarray, shift_px: float, pixel: float) -> int:
    """Square canvas (pixels) holding the largest rotated, rescaled template at the largest shift."""
    w_mm = small.width * small.delx + 2 * abs(small.x0)
    h_mm = small.height * small.dely + 2 * abs(small.y0)
    th = np.radians(np.abs(spins)).max() if len(spins) else 0.0
    extent = scales.max() * max(w_mm * math.cos(th) + h_mm * math.sin(th), h_mm * math.cos(th) + w_mm * math.sin(th))
    n = int(math.ceil(extent / pixel + 2 * shift_px + 4))
    return int(math.ceil(n / 8) * 8)


def _templates(small: Pose, image: torch.Tensor, mask: torch.Tensor, size: int, pixel: float,
               scales: np.ndarray, spins: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(S*R, size, size) X-ray templates and masks on the canvas grid, for every scale k and spin theta:
    canvas position y holds the X-ray at x = R(theta)^-1 y / k."""
    dev = image.device
    coords = (torch.arange(size, device=dev, dtype=torch.float32) - (size - 1) / 2) * pixel
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    grids = []
    for k in scales:
        for th in np.radians(spins):
            c, s = math.cos(th), math.sin(th)
            x = (c * xx + s * yy) / k      # R(theta)^-1 = R(-theta)
            y = (-s * xx + c * yy) / k
            col = (x - small.x0) / small.delx + (small.width - 1) / 2
            row = (y - small.y0) / small.dely + (small.height - 1) / 2
            grids.append(torch.stack([2 * col / max(small.width - 1, 1) - 1, 2 * row / max(small.height - 1, 1) - 1],
                                     -1))
    grid = torch.stack(grids)                                                     # (N, size, size, 2)
    n = grid.shape[0]
    img = F.grid_sample(image[None, None].expand(n, 1, -1, -1), grid, align_corners=True, padding_mode="zeros")
    msk = F.grid_sample(mask[None, None].expand(n, 1, -1, -1), grid, align_corners=True, padding_mode="zeros")
    return img[:, 0], (msk[:, 0] > 0.999).float()


# --- masked NCC over all shifts -------------------------------------------------------------------------------------
class _TemplateSpectra:
    """FFTs of the zero-mean masked templates and of their masks (Padfield's masked NCC needs three correlations)."""

    def __init__(self, templates: torch.Tensor, masks: torch.Tensor):
        n = masks.sum((-1, -2)).clamp(min=1.0)
        mean = (templates * masks).sum((-1, -2)) / n
        centred = (templates - mean[:, None, None]) * masks
        self.count = n                                                            # (T,)
        self.norm = centred.pow(2).sum((-1, -2)).sqrt().clamp(min=1e-12)          # (T,)
        self.f_centred = torch.fft.rfft2(centred).conj()
        self.f_mask = torch.fft.rfft2(masks).conj()


def masked_ncc_maps(canvases: torch.Tensor, spectra: _TemplateSpectra) -> torch.Tensor:
    """(B, T, H, W) masked NCC of every template (placed with its centre at canvas centre + shift) against every
    canvas (B, H, W); index [.., dy mod H, dx mod W] holds the shift (dx, dy)."""
    size = canvases.shape[-2:]
    fc = torch.fft.rfft2(canvases)[:, None]
    fc2 = torch.fft.rfft2(canvases * canvases)[:, None]
    num = torch.fft.irfft2(fc * spectra.f_centred[None], s=size)
    s1 = torch.fft.irfft2(fc * spectra.f_mask[None], s=size)
    s2 = torch.fft.irfft2(fc2 * spectra.f_mask[None], s=size)
    n = spectra.count[None, :, None, None]
    var = (s2 - s1 * s1 / n).clamp(min=0.0)
    scale = canvases.flatten(1).abs().amax(1).clamp(min=1e-12)[:, None, None, None] ** 2
    flat = var < 1e-6 * n * scale  # the template lies over blank canvas: no evidence either way
    ncc = num / (spectra.norm[None, :, None, None] * var.sqrt()).clamp(min=1e-12)
    return torch.where(flat, torch.full_like(ncc, -1.0), ncc)


def _shift_window(size: int, max_px: float, device) -> torch.Tensor:
    """(size, size) bool: circular shift indices within `max_px` of zero (both axes)."""
    idx = torch.arange(size, device=device)
    signed = torch.where(idx > size // 2, idx - size, idx).abs().float()
    ok = signed <= max_px
    return ok[:, None] & ok[None, :]


# --- the search ------------------------------------------------------------------------------------------------------
def search_pose(renderer: FastRenderer, prepared: PreparedXray, nominal: dict[str, Pose], center,
                settings: SearchSettings | None = None, progress: Progress | None = None) -> SearchResult:
    """Candidate poses for one prepared X-ray, best first. `nominal`: view name -> a pose that looks at `center`
    (its detector is the X-ray's; its distance is ignored: every distance in range is searched)."""
    settings = settings or SearchSettings()
    settings.check()
    progress = progress or Progress()
    started = time.perf_counter()
    device = renderer.device
    center = np.asarray(center, dtype=np.float64)
    small, image, mask = _search_images(prepared, settings.pixels, device)
    if float(mask.sum()) < 0.1 * mask.numel():
        raise InputError("less than 10 % of the X-ray is inside the exposed field", prepared.path,
                         "check the collimation mask (--collimator none) or --crop")
    sdd = small.sdd
    lo, hi = distance_range(settings, sdd)
    n_ref = max(1, math.ceil(math.log(hi / lo) / math.log(MAX_REFERENCE_RATIO)))
    ratio = (hi / lo) ** (1.0 / n_ref)
    references = lo * ratio ** (np.arange(n_ref) + 0.5)
    n_scale = max(1, math.ceil(math.log(ratio) / math.log(SCALE_STEP)))
    scales = ratio ** ((np.arange(n_scale) + 0.5) / n_scale - 0.5)                # k about each reference
    spins = _steps(settings.spin_range_deg, settings.spin_step_deg)
    tilts = [(a, b) for a in _steps(settings.angle_range_deg, settings.angle_step_deg)
             for b in _steps(settings.angle_range_deg, settings.angle_step_deg)]
    pixel = math.sqrt(small.delx * small.dely)
    shift_px = settings.shift_mm * sdd / references.min() / pixel
    size = _canvas_size(small, scales, spins, shift_px, pixel)
    canvas_det = dataclasses.replace(small, height=size, width=size, delx=pixel, dely=pixel, x0=0.0, y0=0.0)
    templates, masks = _templates(small, image, mask, size, pixel, scales, spins)
    spectra = _TemplateSpectra(templates, masks)
    windows = torch.stack([_shift_window(size, settings.shift_mm * sdd / d / pixel, device) for d in references])

    views = list(nominal)
    jobs = [(v, t, r) for v in views for t in tilts for r in range(n_ref)]
    best_score = torch.empty(len(jobs), spectra.count.shape[0])
    best_index = torch.empty(len(jobs), spectra.count.shape[0], dtype=torch.long)
    chunk = DIRECTION_CHUNK * n_ref
    level, stride = renderer.plan(dataclasses.replace(canvas_det, world_from_camera=camera(
        nominal[views[0]], center, distance=math.sqrt(lo * hi))), "preview")
    if settings.continue_cut_faces:  # the canvases' full width at the farthest distance, beyond each cut face
        renderer = continued(renderer, size * pixel * hi / sdd, [level])
    with torch.no_grad():
        for first in range(0, len(jobs), chunk):
            part = jobs[first:first + chunk]
            mats = np.stack([camera(nominal[v], center, t, 0.0, references[r]) for v, t, r in part])
            canv = renderer.render_tensor(torch.as_tensor(mats, dtype=torch.float32, device=device), canvas_det,
                                          level, stride)
            maps = masked_ncc_maps(canv, spectra)                                 # (B, T, size, size)
            win = windows[torch.tensor([r for _, _, r in part], device=device)][:, None]
            maps = torch.where(win, maps, torch.full_like(maps, -2.0)).flatten(2)
            score, index = maps.max(2)
            best_score[first:first + len(part)] = score.cpu()
            best_index[first:first + len(part)] = index.cpu()
            progress.update(min(1.0, (first + len(part)) / len(jobs)), f"pose search {first + len(part)}/{len(jobs)}")
    candidates = _distinct(best_score, best_index, jobs, references, scales, spins, size, pixel, nominal, center,
                           prepared.detector, settings.top_k)
    return SearchResult(candidates, time.perf_counter() - started, int(best_score.numel()), len(jobs))


def _distinct(best_score, best_index, jobs, references, scales, spins, size, pixel, nominal, center, detector,
              top_k: int, max_looked: int = 4000) -> list[Candidate]:
    """The best hypotheses that are distinct poses (greedy non-maximum suppression): `top_k`, and with several views
    the best of each view on top of them, so a clinician can compare e.g. AP with PA."""
    n_spin = len(spins)
    order = torch.argsort(best_score.flatten(), descending=True)[:max_looked].tolist()
    sdd = detector.sdd

    def candidate(flat: int) -> Candidate:
        job, t = divmod(flat, best_score.shape[1])
        view, tilt, r = jobs[job]
        k, spin = scales[t // n_spin], spins[t % n_spin]
        dy, dx = divmod(int(best_index[job, t]), size)
        dy, dx = (dy - size if dy > size // 2 else dy), (dx - size if dx > size // 2 else dx)
        d_ref = references[r]
        shift = (dx * pixel * d_ref / sdd, dy * pixel * d_ref / sdd)
        m = camera(nominal[view], center, tilt, float(spin), float(k * d_ref), shift)
        return Candidate(dataclasses.replace(detector, world_from_camera=m), view, tuple(tilt), float(spin),
                         float(k * d_ref), shift, float(best_score[job, t]))

    views = list(nominal)
    chosen: list[Candidate] = []
    if len(views) > 1:
        for view in views:
            flat = next((f for f in order if jobs[f // best_score.shape[1]][0] == view), None)
            if flat is not None:
                chosen.append(candidate(flat))
    wanted = len(chosen) + top_k - (1 if chosen else 0)
    for flat in order:
        if len(chosen) >= wanted:
            break
        cand = candidate(flat)
        if all(not _same_basin(cand, other, center) for other in chosen):
            chosen.append(cand)
    return sorted(chosen, key=lambda c: -c.score)


def sphere_points(center, radius: float = 100.0) -> np.ndarray:
    """Six points `radius` mm from `center` along the world axes: what pose distances are measured on."""
    return np.asarray(center, dtype=np.float64) + radius * np.vstack([np.eye(3), -np.eye(3)])


def pose_distance(a: Pose, b: Pose, center, radius: float = 100.0) -> float:
    """Mean displacement (mm) of `sphere_points` between two camera poses: a target-registration-error proxy that
    needs no CT."""
    pts = sphere_points(center, radius)
    pa = pts @ a.camera_from_world[:3, :3].T + a.camera_from_world[:3, 3]
    pb = pts @ b.camera_from_world[:3, :3].T + b.camera_from_world[:3, 3]
    return float(np.linalg.norm(pa - pb, axis=1).mean())


def _same_basin(a: Candidate, b: Candidate, center) -> bool:
    """Close enough that one refinement would reach both (in-plane ~25 mm, rotations ~12 degrees, depth ~12 %)."""
    if abs(math.log(a.distance_mm / b.distance_mm)) > 0.12:
        return False
    return pose_distance(a.pose, b.pose, center) < 25.0


def refine_candidates(renderer: FastRenderer, prepared: PreparedXray, candidates: list[Candidate], center,
                      settings=None, iterations: int = 30, progress: Progress | None = None) -> list[Candidate]:
    """A short coarse registration (about 32 then 64 px) from every candidate with the optimiser `settings`
    (OptimizerSettings; None: its defaults); sorted best refined first."""
    from .register import OptimizerSettings, optimize, scales_for_pixels

    progress = progress or Progress()
    scales = scales_for_pixels(prepared.detector, (32, 64))
    short = dataclasses.replace(settings or OptimizerSettings(), scales=scales,
                                max_n_itrs=[iterations] * len(scales), finest_max_itrs=iterations, patience=4)
    if short.mask_cut_rays and candidates:
        # Ranked on the whole field, as the search scored them, with the body continued past the CT's cut faces:
        # with the cut rays left out instead, a lateral X-ray of a short CT kept 25-40 % of its field, and the
        # candidates' scores ranked the basins at random.
        renderer = continued(renderer, 2 * max(field_width(c.pose, center) for c in candidates),
                             range(_finest_level(renderer, prepared, candidates, scales[-1]), len(renderer.levels)))
        short.mask_cut_rays = False
    for n, cand in enumerate(candidates):
        traj = optimize(renderer, prepared, cand.pose, center, short,
                        progress.sub(n / len(candidates), (n + 1) / len(candidates)))
        cand.refined_pose = dataclasses.replace(cand.pose, world_from_camera=traj.final)
        loss = traj.final_loss
        cand.refined_score = -loss if math.isfinite(loss) else -math.inf
    return sorted(candidates, key=lambda c: -c.refined_score)


def _finest_level(renderer: FastRenderer, prepared: PreparedXray, candidates: list[Candidate], scale: float) -> int:
    """The finest pyramid level a refinement stage at `scale` starts on from any candidate (one finer: the pose
    moves during the first stage)."""
    from .register import STAGE_HALF_LEVELS

    detector = stage_detector(prepared.detector, scale)
    levels = [renderer.plan(dataclasses.replace(detector, world_from_camera=c.pose.world_from_camera), "hq",
                            STAGE_HALF_LEVELS)[0] for c in candidates]
    return max(0, min(levels) - 1)
