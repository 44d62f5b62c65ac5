"""Fabricated inputs for the translation tests: paired-data folders and registration output folders.

Registration output folder CONTRACT (written by `xraytodrr register`, read by `xraytodrr pairs`):
  pose.json      canonical Pose (final pose)            XrayToDRRLib.pose.load_pose
  gt.png         the X-ray as registration saw it, 16-bit PNG at the pose's detector size
  metrics.json   at least {"ncc": float}
  parameters.pt  torch.save({"settings": {"volume": str, "mask": str | None, "labels": list | None}, ...})
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch


def write_png16(path: str | Path, img01: np.ndarray) -> Path:
    """[0, 1] float image -> 16-bit PNG without rescaling."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.round(np.clip(img01, 0, 1) * 65535).astype(np.uint16)), str(path))
    return path


def read_png(path: str | Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


def anatomy(size: int, rng: np.random.Generator, blobs: int = 6) -> np.ndarray:
    """A smooth 'bone' image in [0, 1]: a few Gaussian blobs and a bar."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    img = np.zeros((size, size))
    for _ in range(blobs):
        cy, cx = rng.uniform(0.15, 0.85, 2)
        s = rng.uniform(0.05, 0.15)
        img += rng.uniform(0.4, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    x0 = rng.uniform(0.3, 0.7)
    img += 0.6 * (np.abs(xx - x0) < 0.05)
    return np.clip(img / img.max(), 0, 1)


def xray_from_drr(drr01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A monotone 'vendor' tone curve, an exposure ramp and noise: what pix2pix has to undo."""
    ramp = np.linspace(0.0, 0.15, drr01.shape[1])[None, :]
    img = 0.15 + 0.7 * drr01 ** 0.5 + ramp + 0.01 * rng.standard_normal(drr01.shape)
    return np.clip(img, 0, 1)


def make_pairs(root: str | Path, n: int = 8, size: int = 32, seed: int = 0, dot: tuple[int, int] | None = None
               ) -> Path:
    """root/xray/case_NN.png and root/drr/case_NN.png (16-bit). `dot`: a bright pixel planted at (row, col) in
    both images of every pair."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n):
        drr = anatomy(size, rng) * 0.7
        xray = xray_from_drr(drr, rng) * 0.8
        if dot is not None:
            drr[dot], xray[dot] = 1.0, 1.0
        write_png16(root / "xray" / f"case_{i:02d}.png", xray)
        write_png16(root / "drr" / f"case_{i:02d}.png", drr)
    return root


def make_registration_folder(folder: str | Path, volume: str | Path, pose, ncc: float, seed: int = 0,
                             mask: str | None = None, labels: list | None = None, extra_metrics: dict | None = None
                             ) -> Path:
    """A registration output folder following the CONTRACT above. gt.png is a noisy tone-mapped DRR (trilinear, so it
    is not the Siddon DRR `pairs` renders)."""
    from XrayToDRRLib.render import DRRRenderer
    from XrayToDRRLib.volumes import read_volume

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pose.save(folder / "pose.json")
    drr = DRRRenderer(read_volume(volume), renderer="trilinear", device="cpu").render(pose)
    rng = np.random.default_rng(seed)
    write_png16(folder / "gt.png", xray_from_drr(drr / max(float(drr.max()), 1e-6), rng))
    (folder / "metrics.json").write_text(json.dumps({"ncc": float(ncc), **(extra_metrics or {})}))
    torch.save({"settings": {"volume": str(volume), "mask": mask, "labels": labels}, "pose": pose.to_dict()},
               folder / "parameters.pt")
    return folder


def make_patient_pairs(root: str | Path, counts: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """Paired data of several patients: root/xray|drr/PATIENT_NN.png and root/pairs.csv with the `patient` column
    `xraytodrr pairs --patient-id-from` writes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = ["name,patient,status"]
    for patient, n in counts.items():
        for i in range(n):
            name = f"{patient}_{i:02d}"
            drr = anatomy(size, rng) * 0.7
            write_png16(root / "xray" / f"{name}.png", xray_from_drr(drr, rng) * 0.8)
            write_png16(root / "drr" / f"{name}.png", drr)
            rows.append(f"{name},{patient},kept")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root
