"""Runs FastRenderer's triton backend under Triton's CPU interpreter and prints its results as one JSON line.

A separate process because TRITON_INTERPRET must be set before triton is imported, and must not leak into the
rest of the suite (on a GPU machine the other tests run the compiled kernel). The interpreter is slow (about
50 ms per ray-block and sample), so images are tiny and levels coarse.
"""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from XrayToDRRLib.fast_render import FastRenderer  # noqa: E402
from XrayToDRRLib.pose import perturb, standard_view  # noqa: E402
from XrayToDRRLib.volumes import center_ras  # noqa: E402


def main(ct_path: str) -> None:
    ct = sitk.ReadImage(ct_path)
    centre = center_ras(ct)
    torch_backend = FastRenderer(ct, device="cpu", backend="torch")
    fused = FastRenderer(ct, device="cpu", backend="triton")
    poses = [perturb(standard_view(view, centre, 1020, 12, 14, 30.0), [4, -3, 5], [6, -8, 10], centre)
             for view in ("ap", "lateral")]
    batch = fused.render(poses, "hq")
    result = {"backend": fused.backend,
              "torch": torch_backend.render(poses, "hq").tolist(), "triton": batch.tolist(),
              "one_by_one": [fused.render(p, "hq").tolist() for p in poses]}

    pose, level = poses[0], len(fused.levels) - 1
    base = torch.as_tensor(pose.world_from_camera[None], dtype=torch.float32)

    def loss(shift):
        m = base.clone()
        m[0, :3, 3] = m[0, :3, 3] + shift
        return fused.render_tensor(m, pose, level).square().mean()

    shift = torch.zeros(3, requires_grad=True)
    loss(shift).backward()
    with torch.no_grad():
        eps = 2.0
        numeric = [(loss(torch.eye(3)[k] * eps) - loss(-torch.eye(3)[k] * eps)).item() / (2 * eps) for k in range(3)]
    result.update(analytic=shift.grad.tolist(), numeric=numeric)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
