"""Simulated X-rays with a known pose: a physics-flavoured radiograph of a CT that is deliberately NOT our own DRR.

Chain (every random parameter drawn from `seed` within plausible ranges, see `sample_parameters`):
 1. two-material decomposition of HU: up to 100 HU a voxel is water at density 1 + HU/1000; above, a linear mix of
    water (100 HU) and cortical bone (`bone_hu`, 1500-2000 HU); line integrals of each material are rendered with
    DRRRenderer(ct, attenuation=fraction) -> two path-length images in mm;
 2. polychromatic beam: Kramers-law tungsten bremsstrahlung (20 bins from 18 keV to kVp, 70-120 kVp) with K lines,
    aluminium filtration, energy-integrating detector; NIST XCOM mass attenuation of water, cortical bone (ICRU-44)
    and aluminium -> beam hardening and energy-dependent bone weighting;
 3. scatter: a heavily low-passed copy of the primary, scatter-to-primary ratio 0.3-1 growing with thickness;
 4. flat-panel geometry (cos^3 fall-off); automatic exposure control (the tube output set so that the detector
    behind the patient's central third receives the sampled dose; `exposure="fixed"`: the same tube output
    whatever the patient); quantum noise (Poisson on photon counts) plus electronic noise;
 5. detector blur (Gaussian core + Lorentzian-like glare tail as an MTF), gain and offset non-uniformity;
 6. log transform -> an attenuation-like image, dense = bright ("raw", DICOM For Processing);
 7. unless raw: vendor "for presentation" processing: heel-effect ramp (applied to the exposure), multiscale
    dynamic-range compression with detail enhancement, an S-shaped tone curve, collimator blades (dark
    electronically masked borders) and a burned-in lead side marker ('R' or 'L') in an upper corner.
The presentation image lies in [0, 1], dense = bright.

Files: `write_simulated_xray` writes the image (X.dcm, or .png/.nii.gz/... ) and its true pose beside it as
X.pose.json (the output name without its image suffix + ".pose.json"; an existing one is replaced).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .atomic import atomic_path
from .errors import InputError
from .images import IMAGE_SUFFIXES, save_image, suffix_of, to_uint16
from .pose import Pose
from .progress import Progress

# NIST XCOM / Hubbell & Seltzer mass attenuation coefficients mu/rho (cm^2/g), with coherent scattering.
TABLE_KEV = np.array([15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0])
MU_RHO_WATER = np.array([1.673, 0.8096, 0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707, 0.1505])
MU_RHO_BONE = np.array([9.032, 4.001, 1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855, 0.1480])  # cortical, ICRU-44
MU_RHO_AL = np.array([7.955, 3.441, 1.128, 0.5685, 0.3681, 0.2778, 0.2018, 0.1704, 0.1378])
RHO_WATER, RHO_BONE, RHO_AL = 1.0, 1.92, 2.699  # g/cm^3
SOFT_TISSUE_MAX_HU = 100.0
N_ENERGIES = 20
DICOM_SUFFIXES = (".dcm", ".dicom")
EXPOSURES = ("aec", "fixed")
# Detector dose per image: 0.03 uGy (a fluoroscopy frame) to 1 uGy (a digital radiograph), at about 30,000
# photons/mm^2 per uGy (IEC 62220-1 beam quality RQA5, 70 kVp).
DETECTOR_PHOTONS_PER_MM2 = (1e3, 3e4)
# exposure="fixed" (the simulator before AEC): 1.5e4-6e4 photons/mm^2 reach the detector where nothing is in the
# beam, however thick the patient (a lateral pelvis then gets under 100 photons per pixel).
FIXED_PHOTONS_PER_MM2 = (1.5e4, 6e4)
AEC_FIELD = 1 / 3  # the measuring chambers: the central third of the field in each direction


def mu_rho(table: np.ndarray, energies_kev) -> np.ndarray:
    """Log-log interpolation of a mass attenuation table (cm^2/g)."""
    return np.exp(np.interp(np.log(energies_kev), np.log(TABLE_KEV), np.log(table)))


def spectrum(kvp: float, al_mm: float, n: int = N_ENERGIES) -> tuple[np.ndarray, np.ndarray]:
    """(energies keV, photon fraction per bin) of a filtered tungsten tube: Kramers' bremsstrahlung (kVp - E)/E,
    K-alpha/K-beta lines above the 69.5 keV K edge, `al_mm` aluminium filtration."""
    edges = np.linspace(18.0, kvp, n + 1)
    energies = (edges[:-1] + edges[1:]) / 2
    photons = (kvp - energies) / energies * np.diff(edges)
    if kvp > 69.5:
        strength = 0.06 * photons.sum() * ((kvp - 69.5) / 50.0) ** 1.5
        for line, weight in ((59.3, 1.0), (67.2, 0.3)):
            photons[min(np.searchsorted(edges, line) - 1, n - 1)] += strength * weight
    photons = photons * np.exp(-mu_rho(MU_RHO_AL, energies) * RHO_AL * al_mm / 10.0)
    return energies, photons / photons.sum()


def sample_parameters(seed: int = 0) -> dict:
    """Every random choice of a simulation, drawn in a fixed order from `seed` (raw and presentation share them)."""
    rng = np.random.default_rng([int(seed), 0])
    u = rng.uniform
    return {
        "kvp": round(u(70, 120), 1),
        "al_filtration_mm": u(2.5, 4.0),
        "bone_hu": u(1500, 2000),
        "dose_quantile": u(0.0, 1.0),  # where the image's dose lies in its range (see photons_per_mm2)
        "electronic_noise": u(2.0, 8.0),
        "scatter_to_primary": u(0.3, 1.0),
        "scatter_sigma_mm": u(25, 60),
        "blur_sigma_px": u(0.5, 1.1),
        "glare_weight": u(0.03, 0.12),
        "glare_mm": u(2.0, 8.0),
        "gain_smooth": u(0.01, 0.04),
        "gain_lines": u(0.002, 0.01),
        "offset": u(0.0, 20.0),
        "offset_lines": u(0.0, 3.0),
        "heel": u(0.08, 0.2) * float(rng.choice([-1.0, 1.0])),
        "heel_axis": int(rng.integers(0, 2)),
        "drc_sigma_mm": u(15, 40),
        "drc_compression": u(0.25, 0.5),
        "detail_sigma_mm": u(2.0, 6.0),
        "detail_gain": u(1.5, 2.5),
        "fine_gain": u(1.05, 1.4),
        "tone_slope": u(2.5, 5.0),
        "collimator_insets": [u(0.02, 0.08) for _ in range(4)],  # top, bottom, left, right (fraction of size)
        "collimator_angle_deg": u(-2.0, 2.0),
        "collimator_level": u(0.0, 0.05),
        "marker_corner_swap": bool(rng.integers(0, 2)),
    }


def photons_per_mm2(params: dict, exposure: str) -> float:
    """aec: photons per mm^2 at the detector behind the patient; fixed: with nothing in the beam."""
    lo, hi = DETECTOR_PHOTONS_PER_MM2 if exposure == "aec" else FIXED_PHOTONS_PER_MM2
    return float(np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * params["dose_quantile"]))


def aec_factor(relative: np.ndarray) -> float:
    """1 / the median relative exposure over the central `AEC_FIELD` of the detector (the chambers' reading):
    the tube output that brings the detector dose there to its target."""
    h, w = relative.shape
    dh, dw = max(1, int(h * AEC_FIELD / 2)), max(1, int(w * AEC_FIELD / 2))
    central = relative[h // 2 - dh:h // 2 + dh, w // 2 - dw:w // 2 + dw]
    return 1.0 / max(float(np.median(central)), 1e-6)


def material_fractions(hu: np.ndarray, bone_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """(water, bone) fractions per voxel (density-weighted: 1 = water at 1 g/cm^3 / cortical bone at 1.92)."""
    hu = np.asarray(hu, dtype=np.float32)
    soft = np.clip(1.0 + hu / 1000.0, 0.0, None)
    bone = np.clip((hu - SOFT_TISSUE_MAX_HU) / (bone_hu - SOFT_TISSUE_MAX_HU), 0.0, 2.5)
    water = np.where(hu > SOFT_TISSUE_MAX_HU, (1.0 + SOFT_TISSUE_MAX_HU / 1000.0) * np.clip(1.0 - bone, 0.0, 1.0),
                     soft)
    return water.astype(np.float32), bone.astype(np.float32)


def path_lengths(ct: sitk.Image, pose: Pose, bone_hu: float, device="auto") -> tuple[np.ndarray, np.ndarray]:
    """Water and bone path-length images (mm) at `pose` (FastRenderer in hq mode: Nyquist-matched to the detector)."""
    from .fast_render import FastRenderer
    from .volumes import array_ijk

    water, bone = material_fractions(array_ijk(ct), bone_hu)
    # The power-of-two levels alone (finer on average than with the half levels): a thin bone's path length is
    # what the simulated images were validated with, and the simulator is not where speed matters.
    lw = FastRenderer(ct, attenuation=water, device=device, half_levels=False).render(pose, "hq")
    lb = (FastRenderer(ct, attenuation=bone, device=device, half_levels=False).render(pose, "hq") if np.any(bone)
          else np.zeros_like(lw))
    return np.clip(lw, 0, None).astype(np.float64), np.clip(lb, 0, None).astype(np.float64)


def simulate_xray(ct: sitk.Image, pose: Pose, seed: int = 0, raw: bool = False, device: str = "auto",
                  progress: Progress | None = None, exposure: str = "aec") -> np.ndarray:
    """A simulated radiograph (H, W) float32 of `ct` (HU) at `pose`, dense = bright. raw=True: the log-transformed
    detector image (attenuation-like, no vendor processing, no collimation); else the presentation image in [0, 1].
    `exposure`: "aec" (automatic exposure control, as every radiographic system) or "fixed" (see EXPOSURES).
    The same seed gives the same image."""
    return _simulate(ct, pose, seed, raw, device, progress, exposure)[0]


def _simulate(ct, pose, seed, raw, device, progress, exposure="aec"):
    progress = progress or Progress()
    pose.validate()
    if exposure not in EXPOSURES:
        raise InputError(f"unknown exposure '{exposure}'", None, f"use one of {', '.join(EXPOSURES)}")
    params = sample_parameters(seed)
    noise = np.random.default_rng([int(seed), 1])
    h, w = pose.height, pose.width

    progress.update(0.05, "rendering water and bone path lengths")
    lw, lb = path_lengths(ct, pose, params["bone_hu"], device)

    progress.update(0.6, "polychromatic transmission")
    energies, photons = spectrum(params["kvp"], params["al_filtration_mm"])
    fluence = photons * energies / np.sum(photons * energies)  # energy-integrating detector
    mw = mu_rho(MU_RHO_WATER, energies) * RHO_WATER / 10.0  # 1/mm
    mb = mu_rho(MU_RHO_BONE, energies) * RHO_BONE / 10.0
    primary = np.zeros((h, w))
    for f, a, b in zip(fluence, mw, mb):
        primary += f * np.exp(-(a * lw + b * lb))

    # scatter: a heavily low-passed copy of the primary; SPR grows with water-equivalent thickness
    thickness = lw + lb * RHO_BONE / RHO_WATER
    spr = params["scatter_to_primary"] * (1 - np.exp(-thickness / 150.0)) / (1 - np.exp(-2.0))
    sigma_px = min(params["scatter_sigma_mm"] / pose.delx, max(h, w) / 3)
    scatter = smooth(primary * spr, sigma_px)
    relative = (primary + scatter) * _flat_panel_falloff(pose)  # the detector's exposure / an unattenuated beam's
    if not raw:
        relative = relative * _heel(h, w, params["heel"], params["heel_axis"])

    progress.update(0.7, "quantum noise, blur, gain")
    n0 = photons_per_mm2(params, exposure) * pose.delx * pose.dely  # photons per pixel of an unattenuated beam
    if exposure == "aec":
        n0 *= aec_factor(relative)
    counts = noise.poisson(np.clip(relative, 0, None) * n0).astype(np.float64)
    counts += noise.normal(0.0, params["electronic_noise"], counts.shape)
    counts = _detector_blur(counts, params["blur_sigma_px"], params["glare_weight"], params["glare_mm"] / pose.delx)
    gain, offset = _gain_offset(h, w, params, noise)
    signal = counts * gain + offset
    image = -np.log(np.clip(signal, 0.5, None) / n0)  # attenuation-like, dense = bright
    if raw:
        progress.update(1.0, "done")
        return image.astype(np.float32), params

    progress.update(0.85, "presentation processing")
    field = _collimator(h, w, params["collimator_insets"], params["collimator_angle_deg"])
    image = _presentation(image, field > 0.5, pose, params)
    image = field * image + (1 - field) * params["collimator_level"]
    image = _burn_marker(image, pose, field, params)
    progress.update(1.0, "done")
    return np.clip(image, 0, 1).astype(np.float32), params


# --- physical pieces ---------------------------------------------------------------------------------------------
def smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass (edges extended); wide kernels run on a coarser grid so large detectors stay fast."""
    factor = int(sigma_px // 8)
    if factor < 2:
        return ndimage.gaussian_filter(img, sigma_px, mode="nearest")
    small = ndimage.zoom(img, 1 / factor, order=1, mode="nearest", grid_mode=True)
    small = ndimage.gaussian_filter(small, sigma_px / factor, mode="nearest")
    zoom = (img.shape[0] / small.shape[0], img.shape[1] / small.shape[1])
    return ndimage.zoom(small, zoom, order=1, mode="nearest", grid_mode=True)[:img.shape[0], :img.shape[1]]


def _flat_panel_falloff(pose: Pose) -> np.ndarray:
    """cos^3 of the ray angle: inverse square and obliquity on a flat detector."""
    rows, cols = np.mgrid[0:pose.height, 0:pose.width].astype(np.float64)
    x = (cols - (pose.width - 1) / 2) * pose.delx + pose.x0
    y = (rows - (pose.height - 1) / 2) * pose.dely + pose.y0
    return (pose.sdd / np.sqrt(x ** 2 + y ** 2 + pose.sdd ** 2)) ** 3


def _heel(h: int, w: int, amount: float, axis: int) -> np.ndarray:
    """Anode heel effect: exposure falling off linearly along one axis (+-amount/2 about the centre)."""
    ramp = np.linspace(-0.5, 0.5, h if axis == 0 else w) * amount
    return 1.0 + (ramp[:, None] if axis == 0 else ramp[None, :]) * np.ones((h, w))


def _detector_blur(img: np.ndarray, sigma_px: float, glare_weight: float, glare_px: float) -> np.ndarray:
    """MTF = (1-w) Gaussian + w exp(-2 pi gamma f) (the 2D Lorentzian-like glare kernel), applied by FFT with
    reflective padding."""
    pad = int(min(max(3 * glare_px, 4 * sigma_px, 4), min(img.shape) - 1))
    padded = np.pad(img, pad, mode="reflect")
    fy = np.fft.fftfreq(padded.shape[0])[:, None]
    fx = np.fft.rfftfreq(padded.shape[1])[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    mtf = ((1 - glare_weight) * np.exp(-2 * (math.pi * sigma_px * f) ** 2)
           + glare_weight * np.exp(-2 * math.pi * glare_px * f))
    out = np.fft.irfft2(np.fft.rfft2(padded) * mtf, s=padded.shape)
    return out[pad:-pad, pad:-pad]


def _gain_offset(h: int, w: int, params: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """Residual flat-field error: smooth gain variation, readout-line gain and offset stripes."""
    smooth = ndimage.zoom(rng.normal(0, 1, (4, 4)), (h / 4, w / 4), order=3)[:h, :w]
    smooth = smooth / (np.abs(smooth).max() + 1e-9) * params["gain_smooth"]
    lines = rng.normal(0, params["gain_lines"], w)[None, :] + rng.normal(0, params["gain_lines"] / 2, h)[:, None]
    offset = params["offset"] + rng.normal(0, params["offset_lines"], w)[None, :]
    return (1 + smooth) * (1 + lines), offset * np.ones((h, w))


# --- vendor processing ---------------------------------------------------------------------------------------------
def _collimator(h: int, w: int, insets, angle_deg: float) -> np.ndarray:
    """Soft-edged (about one pixel) mask of the exposed field between four slightly rotated blades."""
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    a = math.radians(angle_deg)
    u = (cols - cx) * math.cos(a) + (rows - cy) * math.sin(a)
    v = -(cols - cx) * math.sin(a) + (rows - cy) * math.cos(a)
    top, bottom, left, right = insets
    margin = np.minimum.reduce([v + cy - top * h, (h - 1 - cy) - bottom * h - v, u + cx - left * w,
                                (w - 1 - cx) - right * w - u])
    return np.clip(margin + 0.5, 0.0, 1.0)


def _presentation(img: np.ndarray, inside: np.ndarray, pose: Pose, params: dict) -> np.ndarray:
    """Multiscale dynamic-range compression with detail enhancement, then an S-shaped tone curve -> [0, 1]."""
    lo, hi = np.percentile(img[inside], [1, 99])
    x = (img - lo) / max(hi - lo, 1e-6)
    if not inside.all():  # extend the field's edge values outwards so the filters see no borders
        nearest = ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
        x = x[tuple(nearest)]
    large = smooth(x, params["drc_sigma_mm"] / pose.delx)
    mid = smooth(x, max(params["detail_sigma_mm"] / pose.delx, 0.7))
    fine = ndimage.gaussian_filter(x, 0.7, mode="nearest")
    base = large.mean()
    y = (base + params["drc_compression"] * (large - base) + params["detail_gain"] * (mid - large)
         + params["fine_gain"] * (fine - mid) + (x - fine))
    lo, hi = np.percentile(y[inside], [0.5, 99.9])
    y = (y - lo) / max(hi - lo, 1e-6)
    k = params["tone_slope"]
    s = 1 / (1 + np.exp(-k * (y - 0.5)))
    s0, s1 = 1 / (1 + math.exp(k / 2)), 1 / (1 + math.exp(-k / 2))
    return np.clip((s - s0) / (s1 - s0), 0, 1)


_LETTERS = {
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
}


def marker_letter_and_side(pose: Pose, swap: bool = False) -> tuple[str, str]:
    """('R' or 'L', 'left' or 'right' image side). Frontal views mark the patient's right on the side where it
    appears; lateral views mark the side against the detector, placed on the anterior side of the image."""
    x = pose.rotation[:, 0]  # RAS direction of increasing column
    v = pose.principal_ray
    if abs(x[0]) >= 0.5:
        return "R", "right" if x[0] > 0 else "left"
    letter = "L" if v[0] < 0 else "R"
    side = "right" if x[1] > 0 else "left"
    if swap:
        side = "left" if side == "right" else "right"
    return letter, side


def _burn_marker(img: np.ndarray, pose: Pose, field: np.ndarray, params: dict) -> np.ndarray:
    letter, side = marker_letter_and_side(pose, params["marker_corner_swap"])
    bitmap = np.array([[c == "1" for c in row] for row in _LETTERS[letter]], dtype=np.float64)
    h, w = img.shape
    scale = max(1, int(round(0.05 * min(h, w) / 7)))
    glyph = np.kron(bitmap, np.ones((scale, scale)))
    gh, gw = glyph.shape
    rows = np.where(field.max(axis=1) > 0.99)[0]
    cols = np.where(field.max(axis=0) > 0.99)[0]
    if len(rows) < gh + 4 or len(cols) < gw + 4:
        return img
    pad = max(2, scale * 2)
    r0 = min(rows[0] + pad, h - gh)
    c0 = min(cols[0] + pad, w - gw) if side == "left" else max(cols[-1] - pad - gw + 1, 0)
    glyph = ndimage.gaussian_filter(glyph, 0.4)
    out = img.copy()
    patch = out[r0:r0 + gh, c0:c0 + gw]
    out[r0:r0 + gh, c0:c0 + gw] = patch * (1 - glyph) + 0.97 * glyph
    return out


# --- files ----------------------------------------------------------------------------------------------------------
def pose_path_for(output: str | Path) -> Path:
    """X.dcm -> X.pose.json, X.nii.gz -> X.pose.json (beside the image)."""
    output = Path(output)
    suffix = suffix_of(output)
    stem = output.name[: len(output.name) - len(suffix)] if suffix else output.name
    return output.with_name(f"{stem}.pose.json")


def write_simulated_xray(volume, pose, output: str | Path, seed: int = 0, raw: bool = False, device: str = "auto",
                         progress: Progress | None = None, exposure: str = "aec") -> tuple[Path, Path]:
    """Simulate an X-ray of `volume` (path or sitk.Image, HU) at `pose` (Pose or pose file) and write it to
    `output` (.dcm: 16-bit DX DICOM with SDD and ImagerPixelSpacing; or .png/.nii.gz/.nrrd/.tif/.npy) and the
    true pose beside it (`pose_path_for`). Returns (image path, pose path)."""
    from .dicom import patient_orientation, positioner_angles, view_name, write_xray_dicom
    from .pose import load_pose
    from .volumes import center_ras, read_volume

    output = Path(output)
    kind = suffix_of(output)
    if kind not in DICOM_SUFFIXES + IMAGE_SUFFIXES:
        raise InputError(f"unknown output type '{kind}'", output, f"use .dcm or one of {', '.join(IMAGE_SUFFIXES)}")
    if output.is_dir():
        raise InputError("output is a folder", output, "give a file name such as X.dcm")
    pose = load_pose(pose) if isinstance(pose, (str, Path)) else pose.validate()
    ct = read_volume(volume) if isinstance(volume, (str, Path)) else volume
    image, params = _simulate(ct, pose, seed, raw, device, progress, exposure)
    pose_path = pose_path_for(output)
    with atomic_path(output) as tmp_image, atomic_path(pose_path) as tmp_pose:
        if kind in DICOM_SUFFIXES:
            dsp = float(pose.depth(center_ras(ct))[0])
            primary, secondary = positioner_angles(pose)
            view = view_name(pose)
            record = {"seed": int(seed), "raw": bool(raw), "exposure": exposure,
                      **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in params.items()}}
            meta = dict(
                KVP=float(params["kvp"]), ViewPosition=view if view in ("AP", "PA", "LL", "RL") else "",
                PatientOrientation=patient_orientation(pose), PositionerPrimaryAngle=primary,
                PositionerSecondaryAngle=secondary, DetectorType="SCINTILLATOR",
                SeriesDescription=f"Simulated X-ray (seed {int(seed)})",
                DerivationDescription=f"simulated by xraytodrr simulate-xray from CT "
                                      f"{Path(str(volume)).name if isinstance(volume, (str, Path)) else 'image'}",
                ImageComments=json.dumps(record)[:10240])
            if 0 < dsp < pose.sdd:  # the CT centre as the patient position
                meta.update(DistanceSourceToPatient=round(dsp, 2),
                            EstimatedRadiographicMagnificationFactor=round(pose.sdd / dsp, 4))
            stored = image if raw else to_uint16(image, 0.0, 1.0)  # presentation: [0, 1] -> 0..65535
            write_xray_dicom(stored, tmp_image, pose.sdd, pose.delx, pose.dely, for_processing=raw, **meta)
        else:
            save_image(image, tmp_image, spacing=(pose.dely, pose.delx))
        pose.save(tmp_pose)
    return output, pose_path
