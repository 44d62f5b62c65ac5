"""Label-map clean-up: keep the largest connected component of each label (what Slicer's Islands effect does)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .progress import Progress
from .volumes import check_labels


def clean_seg(labels: sitk.Image, wanted: list[int] | None = None, path=None,
              progress: Progress | None = None) -> tuple[sitk.Image, dict[int, int]]:
    """Keep only the largest face-connected (6-neighbour) component of each wanted label (all labels by default).

    Removed voxels become background (0); other labels are untouched. Returns the cleaned label map (same grid and
    pixel type) and {label: voxels removed}. `path` only names the file in error messages.
    """
    progress = progress or Progress()
    chosen = check_labels(labels, wanted, path)
    arr = sitk.GetArrayFromImage(labels)
    # One pass for every label's bounding box, so each component search runs on a small block, not the volume.
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(labels)
    removed = {}
    for n, label in enumerate(chosen):
        progress.update(n / len(chosen), f"label {label}")
        x, y, z, sx, sy, sz = shapes.GetBoundingBox(label)
        block = arr[z:z + sz, y:y + sy, x:x + sx]
        mask = block == label
        components = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.view(np.uint8)),
                                                                    False))
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        stray = mask & (components != np.argmax(sizes))
        block[stray] = 0
        removed[int(label)] = int(stray.sum())
        if removed[label]:
            progress.log(f"label {label}: removed {removed[label]} voxels outside its largest component")
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(labels)
    progress.update(1.0, "cleaned")
    return out, removed

