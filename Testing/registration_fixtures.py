"""Helpers for the registration tests: small simulated cases with known poses, written as files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from XrayToDRRLib.pose import Pose, perturb, standard_view
from XrayToDRRLib.volumes import center_ras

SDD = 1020.0
FOV = 307.2  # mm on the detector


def detector_pose(ct: sitk.Image, view: str = "ap", size: int = 96) -> Pose:
    return standard_view(view, center_ras(ct), SDD, size, size, FOV / size)


def known_pose(ct: sitk.Image, view: str = "ap", size: int = 96, seed: int = 0, rot: float = 4.0,
               trans: float = 8.0) -> Pose:
    """A pose near a standard view (rotations up to `rot` degrees, translations up to `trans` mm)."""
    rng = np.random.default_rng(seed)
    c = center_ras(ct)
    return perturb(detector_pose(ct, view, size), rng.uniform(-rot, rot, 3), rng.uniform(-trans, trans, 3), c)


def offset(pose: Pose, ct: sitk.Image, rot_deg: float = 5.0, trans_mm: float = 10.0, seed: int = 1) -> Pose:
    """`pose` moved by exactly `rot_deg` degrees about a random axis through the volume centre and `trans_mm` mm
    in a random direction."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    angles = Rotation.from_rotvec(np.radians(rot_deg) * axis).as_euler("xyz", degrees=True)
    return perturb(pose, angles, trans_mm * direction, center_ras(ct))


def simulated_xray(ct: sitk.Image, pose: Pose, path: Path, seed: int = 0, raw: bool = True) -> Path:
    """A physically simulated X-ray (simulate.py) written as DICOM, with its true pose as X.pose.json."""
    from XrayToDRRLib.simulate import write_simulated_xray

    image, _ = write_simulated_xray(ct, pose, path, seed=seed, raw=raw, device="cpu")
    return image


def landmarks_json(path: Path, pixels, ras) -> Path:
    points = [{"pixel": [float(u), float(v)], "ras": [float(x) for x in p]} for (u, v), p in zip(pixels, ras)]
    path.write_text(json.dumps({"points": points}))
    return path


def listing(folder: Path) -> list[str]:
    """Every path under `folder`, relative, sorted (to check that nothing was written)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def run_ok(*args):
    """Run the CLI in-process and require success."""
    from cli_helpers import run_cli

    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory, small_ct, small_ct_path):
    """A cheap registration folder (48 px simulated X-ray, few iterations) and its inputs."""
    folder = tmp_path_factory.mktemp("quick")
    true = known_pose(small_ct, "ap", 48, seed=5)
    xray = simulated_xray(small_ct, true, folder / "x.dcm", seed=5)
    init = offset(true, small_ct, 3.0, 6.0, seed=2)
    init.save(folder / "init.json")
    out = folder / "out"
    run_ok("register", xray, "--volume", small_ct_path, "-o", out, "--init-pose", folder / "init.json",
           "--max-n-itrs", "6", "--scales", "2,1", "--renderer", "fast", "--device", "cpu", "--progress", "none")
    return {"folder": out, "xray": xray, "true": true, "init": init, "ct": small_ct_path}


def synthetic_body(spacing: float = 4.0, seed: int = 3) -> sitk.Image:
    """A torso-like CT (HU) that is not the chest: a soft-tissue ellipsoid with a posterior spine, two air
    ellipsoids and bone blobs at seeded, asymmetric places (so no view is its own mirror image)."""
    rng = np.random.default_rng(seed)
    n = (int(320 / spacing), int(240 / spacing), int(260 / spacing))            # (x, y, z) voxels
    x, y, z = np.meshgrid(*[(np.arange(m) - (m - 1) / 2) * spacing for m in n], indexing="ij")
    hu = np.full(n, -1000.0, np.float32)
    hu[(x / 150) ** 2 + (y / 105) ** 2 + (z / 125) ** 2 < 1] = 30.0
    for side in (-1, 1):
        hu[((x - side * 60) / 45) ** 2 + ((y + 10) / 55) ** 2 + (z / 80) ** 2 < 1] = -800.0
    hu[(x / 14) ** 2 + ((y - 70) / 14) ** 2 < 1] = 900.0                         # spine (posterior = +y in LPS)
    for _ in range(9):
        c = rng.uniform([-110, -70, -100], [110, 70, 100])
        r = rng.uniform(8, 22, 3)
        hu[((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 < 1] = rng.uniform(500, 1400)
    img = sitk.GetImageFromArray(np.ascontiguousarray(hu.transpose(2, 1, 0)))
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin(tuple(-(m - 1) / 2 * spacing for m in n))
    return img


def carm_pose(ct: sitk.Image, view: str, distance: float, tilt=(0.0, 0.0), spin: float = 0.0, shift=(0.0, 0.0),
              size: int = 64, sdd: float = SDD) -> Pose:
    """An ordinary C-arm pose: a standard view turned by `tilt`, spun by `spin` (degrees), the source `distance` mm
    from the CT centre and the patient `shift` mm off the beam's axis."""
    import dataclasses

    from XrayToDRRRegistrationLib.search import camera

    c = center_ras(ct)
    nominal = standard_view(view, c, sdd, size, size, FOV / size, source_to_isocenter=distance)
    return dataclasses.replace(nominal, world_from_camera=camera(nominal, c, tilt, spin, distance, shift))


def xray_folder(folder: Path, ct: sitk.Image) -> Path:
    """`folder` with two small simulated X-rays (AP, lateral) and a corrupt DICOM between them (file order a, b, c)."""
    folder.mkdir()
    for n, view in enumerate(("ap", "lateral")):
        simulated_xray(ct, known_pose(ct, view, 32, seed=n), folder / f"{'ac'[n]}_{view}.dcm", seed=n)
    (folder / "b_corrupt.dcm").write_bytes(b"DICM" + bytes(range(256)) * 4)
    return folder

