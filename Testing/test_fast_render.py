"""FastRenderer (volume pyramid, clipped rays): agrees with DiffDRR, keeps the pinhole geometry, has pose gradients."""

import numpy as np
import pytest
import torch
from test_render import blob_centroids, nearest_errors, plant_beads, poses_around

from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.pose import perturb, standard_view
from XrayToDRRLib.render import DRRRenderer
from XrayToDRRLib.volumes import center_ras


def ncc(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def fast(small_ct):
    return FastRenderer(small_ct, device="cpu")


@pytest.fixture(scope="module")
def fast_torch(small_ct):
    """Gradients are the torch path's (on every backend): their finite differences must be of its images too."""
    return FastRenderer(small_ct, device="cpu", backend="torch")


def test_pyramid_levels_coarsen_by_about_two(small_ct):
    voxels = [lvl.voxel for lvl in FastRenderer(small_ct, device="cpu", half_levels=False).levels]
    assert len(voxels) >= 2 and all(1.5 < b / a < 2.6 for a, b in zip(voxels, voxels[1:]))


def test_half_levels_sit_between_the_powers_of_two(small_ct, fast):
    voxels = [lvl.voxel for lvl in fast.levels]
    finest = voxels[0]
    # Steps of 1.33-1.5 where the finest axes set the voxel; larger where this CT's 12.5 mm slices take over.
    assert len(voxels) >= 6 and all(1.15 < b / a <= 2.0 for a, b in zip(voxels, voxels[1:]))
    assert voxels[1] == pytest.approx(1.5 * finest, rel=1e-3) and voxels[2] == pytest.approx(2 * finest, rel=1e-3)
    # HQ now takes a level between one and two pixel footprints, never much finer than it needs.
    centre = center_ras(small_ct)
    for delx in (8.0, 11.0, 15.0, 22.0):  # footprints about half of these: 1.1-3.1 finest voxels
        pose = standard_view("ap", centre, 1020, 32, 32, delx)
        level, _ = fast.plan(pose, "hq")
        assert fast.levels[level].voxel <= 2.0 * fast.footprint(pose) * 1.01
        if level + 1 < len(voxels):
            assert fast.levels[level + 1].voxel > 2.0 * fast.footprint(pose) * 1.01


def test_area_resample_keeps_the_mass_and_equals_pooling_at_integer_factors():
    from XrayToDRRLib.fast_render import _area_resample, _pool

    mu = torch.rand(21, 30, 41, generator=torch.Generator().manual_seed(0))
    pooled, pooled_affine = _pool(mu, np.eye(4), (2, 3, 2))
    resampled, resampled_affine = _area_resample(mu, np.eye(4), (2, 3, 2))
    assert torch.allclose(pooled, resampled, atol=1e-6) and np.allclose(pooled_affine, resampled_affine)
    coarse, affine = _area_resample(mu, np.eye(4), (1.5, 4 / 3, 1.25))
    assert coarse.shape == (17, 23, 28)
    assert float(coarse.sum()) * 1.5 * (4 / 3) * 1.25 == pytest.approx(float(mu.sum()), rel=1e-5)
    assert np.allclose(affine[:3, 3], [0.25, 1 / 6, 0.125])  # centres of the first blocks


@pytest.mark.parametrize("mode, minimum", [("hq", 0.99), ("preview", 0.97)])
def test_modes_agree_with_diffdrr_siddon(small_ct, fast, mode, minimum):
    centre = center_ras(small_ct)
    pose = perturb(standard_view("ap", centre, 1020, 64, 64, 6.0), [8, -5, 6], [5, 10, -15], centre)
    reference = DRRRenderer(small_ct, renderer="siddon", device="cpu").render(pose)
    image = fast.render(pose, mode)
    assert ncc(image, reference) >= minimum
    assert image.mean() == pytest.approx(reference.mean(), rel=0.03)


def test_beads_project_within_one_pixel_at_every_level(small_ct):
    size = np.array(small_ct.GetSize())
    points = [tuple(int(v) for v in np.round(f * (size - 1))) for f in ([0.3, 0.3, 0.35], [0.7, 0.4, 0.6])]
    with_beads, beads = plant_beads(small_ct, points, hu=30000.0)
    plain, beaded = FastRenderer(small_ct, device="cpu"), FastRenderer(with_beads, device="cpu")
    for pose in poses_around(center_ras(small_ct), height=64, width=72, delx=8.0, dely=8.5)[:3]:
        for level, lvl in enumerate(plain.levels[:-1]):
            # Each level is used where its voxels are no larger than the detector pixel footprint.
            scale = max(1.0, lvl.voxel / plain.footprint(pose))
            seen = pose.with_detector(height=int(pose.height / scale), width=int(pose.width / scale))
            matrices = torch.as_tensor(seen.world_from_camera[None], dtype=torch.float32)
            with torch.no_grad():
                diff = (beaded.render_tensor(matrices, seen, level) - plain.render_tensor(matrices, seen, level))[0]
            errors = nearest_errors(blob_centroids(diff.numpy(), 2), seen.project(beads))
            assert errors.max() < 1.0, (level, errors)


def test_batch_equals_one_by_one(small_ct, fast):
    poses = poses_around(center_ras(small_ct), height=32, width=32, delx=12.0, dely=12.0)
    batch = fast.render(poses, "hq")
    assert np.allclose(batch, np.stack([fast.render(p, "hq") for p in poses]), atol=1e-5)


def test_pose_gradient_matches_finite_differences(small_ct, fast_torch):
    centre = center_ras(small_ct)
    pose = perturb(standard_view("ap", centre, 1020, 24, 24, 16.0), [3, 2, -4], [4, -6, 5], centre)
    base = torch.as_tensor(pose.world_from_camera[None], dtype=torch.float64)

    def loss(shift):
        m = base.clone()
        m[0, :3, 3] = m[0, :3, 3] + shift
        return fast_torch.render_tensor(m.float(), pose, level=1, step_factor=0.25).square().mean()

    shift = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    loss(shift).backward()
    eps = 1.0
    numeric = [(loss(torch.eye(3, dtype=torch.float64)[k] * eps) - loss(-torch.eye(3, dtype=torch.float64)[k] * eps))
               .item() / (2 * eps) for k in range(3)]
    # The analytic gradient is the continuous one (clip distances carry none, see FastRenderer): it matches the
    # finite differences of the finely sampled sum up to sampling error.
    analytic, numeric = shift.grad.numpy(), np.array(numeric)
    assert np.linalg.norm(analytic - numeric) < 0.1 * np.linalg.norm(numeric)


@pytest.mark.parametrize("view", ["ap", "lateral"])
def test_pose_gradient_along_the_beam_matches_finite_differences(small_ct, fast_torch, view):
    # Depth is registration's weakest direction: its gradient must be the sampled image's, not sampling noise.
    centre = center_ras(small_ct)
    pose = perturb(standard_view(view, centre, 1020, 48, 40, 8.0), [5, -3, 4], [6, 8, -10], centre)
    base = torch.as_tensor(pose.world_from_camera[None], dtype=torch.float32)
    beam = torch.as_tensor(pose.world_from_camera[:3, 2], dtype=torch.float32)

    def loss(depth):
        m = base.clone()
        m[0, :3, 3] = m[0, :3, 3] + depth * beam
        return fast_torch.render_tensor(m, pose, level=1).square().mean()

    depth = torch.zeros((), requires_grad=True)
    loss(depth).backward()
    with torch.no_grad():
        numeric = (loss(torch.tensor(1.0)) - loss(torch.tensor(-1.0))).item() / 2.0
    assert depth.grad.item() == pytest.approx(numeric, rel=0.05)
