"""DRR rendering at canonical poses, on top of DiffDRR's Siddon and trilinear ray tracers.

A DRR pixel is the line integral of linear attenuation (1/mm) along the source -> pixel ray: dimensionless,
dense = bright. HU are mapped to attenuation with water's coefficient at a typical effective energy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from . import diffdrr_frames as frames
from .errors import InputError
from .pose import Pose
from .volumes import array_ijk, check_labels, ras_affine, read_labels, read_volume

MU_WATER_PER_MM = 0.0206  # water at ~60 keV effective energy (NIST XCOM 0.206 /cm)
RENDERERS = ("siddon", "trilinear")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU. Asking for CUDA without one is an input error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is available", None, "use --device cpu or auto")
    return torch.device(device)


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm) from Hounsfield units; air and below map to 0."""
    return np.clip(MU_WATER_PER_MM * (1.0 + np.asarray(hu, dtype=np.float32) / 1000.0), 0.0, None).astype(np.float32)


def label_mask(labels: sitk.Image, wanted: list[int] | None, path=None) -> np.ndarray:
    """(i, j, k) boolean mask of the wanted labels (all labels by default)."""
    chosen = check_labels(labels, wanted, path)
    return np.isin(array_ijk(labels, np.int32), chosen)


class DRRRenderer:
    """Holds one prepared volume and renders any number of canonical poses (batched when detectors match)."""

    def __init__(self, volume: sitk.Image, mask: np.ndarray | None = None, renderer: str = "siddon",
                 device: str | torch.device = "auto", attenuation: np.ndarray | None = None,
                 samples_per_voxel: float = 1.0):
        if renderer not in RENDERERS:
            raise InputError(f"unknown renderer '{renderer}'", None, f"use one of {', '.join(RENDERERS)}")
        from torchio import ScalarImage, Subject

        self.device = pick_device(device)
        self.renderer = renderer
        self.affine = ras_affine(volume)
        mu = hu_to_mu(array_ijk(volume)) if attenuation is None else np.asarray(attenuation, np.float32)
        if mask is not None:
            mu = mu * mask
        tensor = torch.from_numpy(np.ascontiguousarray(mu))[None]
        image = ScalarImage(tensor=tensor, affine=self.affine)
        self.subject = Subject(volume=image, density=image, mask=None, reorient=torch.eye(4), orientation=None,
                               fiducials=None)
        spacing = np.array(volume.GetSpacing())
        diagonal = float(np.linalg.norm(spacing * np.array(volume.GetSize())))
        # Trilinear: sample at least once per smallest voxel along the longest chord.
        self.n_points = max(64, math.ceil(samples_per_voxel * diagonal / spacing.min()))
        self._drr = None
        self._detector = None

    def _drr_for(self, pose: Pose):
        from diffdrr.drr import DRR

        key = frames.detector_kwargs(pose)
        if self._drr is None:
            self._drr = DRR(self.subject, renderer=self.renderer, **key).to(self.device)
        elif key != self._detector:
            self._drr.set_intrinsics_(**key)
        self._detector = key
        return self._drr

    def render_extrinsics(self, extrinsics: torch.Tensor, pose: Pose) -> torch.Tensor:
        """Differentiable: (B,4,4) DiffDRR extrinsics with `pose`'s detector -> (B,H,W) DRRs (for registration)."""
        from diffdrr.pose import RigidTransform

        drr = self._drr_for(pose)
        kwargs = {"n_points": self.n_points} if self.renderer == "trilinear" else {}
        return drr(RigidTransform(extrinsics), **kwargs)[:, 0]

    def extrinsics(self, poses: list[Pose]) -> torch.Tensor:
        mats = [frames.to_diffdrr_extrinsic(p.world_from_camera) for p in poses]
        return torch.as_tensor(np.stack(mats), dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def render(self, poses: Pose | list[Pose], batch_size: int = 4) -> np.ndarray:
        """(H,W) for one pose, (B,H,W) for a list; poses with different detectors are rendered in separate batches
        (and come back as a list when their sizes differ)."""
        single = isinstance(poses, Pose)
        poses = [poses] if single else list(poses)
        out = [None] * len(poses)
        for idx in range(0, len(poses)):
            if out[idx] is not None:
                continue
            same = [k for k in range(idx, len(poses)) if out[k] is None
                    and frames.detector_kwargs(poses[k]) == frames.detector_kwargs(poses[idx])]
            for start in range(0, len(same), batch_size):
                chunk = same[start:start + batch_size]
                imgs = self.render_extrinsics(self.extrinsics([poses[k] for k in chunk]), poses[idx])
                for k, img in zip(chunk, imgs.float().cpu().numpy()):
                    out[k] = img
        if single:
            return out[0]
        return np.stack(out) if len({o.shape for o in out}) == 1 else out


def render_drr(volume: str | Path, poses: Pose | list[Pose], mask: str | Path | None = None,
               labels: list[int] | None = None, renderer: str = "siddon", device: str = "auto") -> np.ndarray:
    """Read a CT (and optional label map restricting the DRR to `labels`) and render one or many poses."""
    ct = read_volume(volume)
    keep = label_mask(read_labels(mask, reference=ct), labels, mask) if mask is not None else None
    return DRRRenderer(ct, mask=keep, renderer=renderer, device=device).render(poses)
