"""FastRenderer's numba backend (the CPU's compiled per-ray loop) against its torch backend: same images, shapes
and orientation, batches, several volumes; the choice of backend; the same pose gradients as the torch path."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import phantom

from XrayToDRRLib import numba_render
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.pose import perturb, standard_view
from XrayToDRRLib.render import DRRRenderer
from XrayToDRRLib.volumes import center_ras

pytestmark = pytest.mark.skipif(not numba_render.available(), reason="numba is not installed")


def ncc(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def poses_of(ct, height=40, width=48, delx=9.0):
    """AP, lateral and an oblique view on one detector (so one batch)."""
    centre = center_ras(ct)
    ap = perturb(standard_view("ap", centre, 1020, height, width, delx), [6, -4, 5], [8, -5, 12], centre)
    lateral = perturb(standard_view("lateral", centre, 1020, height, width, delx), [-3, 5, 2], [0, 6, -4], centre)
    oblique = perturb(standard_view("ap", centre, 1020, height, width, delx), [25, 10, 40], [-5, 0, 8], centre)
    return [ap, lateral, oblique]


@pytest.fixture(scope="module", params=["chest", "oblique phantom"])
def volume(request, small_ct):
    if request.param == "chest":
        return small_ct
    angle = np.deg2rad(30)
    direction = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    return phantom(direction=direction)


def test_auto_picks_numba_on_the_cpu_and_torch_without_it(small_ct, monkeypatch):
    assert FastRenderer(small_ct, device="cpu").backend == "numba"
    assert FastRenderer(small_ct, device="cpu", backend="numba").backend == "numba"
    monkeypatch.setattr(numba_render, "available", lambda: False)
    assert FastRenderer(small_ct, device="cpu").backend == "torch"
    with pytest.raises(InputError, match="numba backend runs on the CPU and needs numba"):
        FastRenderer(small_ct, device="cpu", backend="numba")


@pytest.mark.parametrize("mode", ["hq", "full", "preview"])
def test_numba_matches_torch_for_batches_of_views(volume, mode):
    ours, reference = FastRenderer(volume, device="cpu", backend="numba"), FastRenderer(volume, device="cpu",
                                                                                        backend="torch")
    poses = [dataclasses.replace(p, x0=20.0, y0=-15.0) for p in poses_of(volume)]  # off-centre principal point
    images, expected = ours.render(poses, mode), reference.render(poses, mode)
    siddon = DRRRenderer(volume, renderer="siddon", device="cpu").render(poses)
    assert images.shape == expected.shape == (3, 40, 48)
    for image, target, exact in zip(images, expected, siddon):
        assert target.max() > 1.0  # the body is in view
        # full: the same trilinear midpoint rule as torch. hq/preview: samples on voxel planes (see numba_render),
        # another sampling of the same volume, never further from siddon than the torch backend.
        assert ncc(image, target) >= (0.9999 if mode == "full" else 0.9998)
        assert ncc(image, exact) >= ncc(target, exact) - 1e-4
        # Each ray's own sample count against its pose's longest chord's: 0.1-0.3 % apart at 8 mm voxels.
        assert image.mean() == pytest.approx(target.mean(), rel=0.005)
        # Same orientation: the brightest column and row are where the torch backend has them.
        assert abs(int(image.sum(0).argmax()) - int(target.sum(0).argmax())) <= 1
        assert abs(int(image.sum(1).argmax()) - int(target.sum(1).argmax())) <= 1


def test_batch_equals_one_by_one(small_ct):
    ours = FastRenderer(small_ct, device="cpu", backend="numba")
    poses = poses_of(small_ct, 24, 20, 16.0)
    assert np.array_equal(ours.render(poses, "hq"), np.stack([ours.render(p, "hq") for p in poses]))


@pytest.mark.parametrize("level", [0, 1])
def test_gradients_match_the_torch_path(volume, level):
    """A pose that needs a gradient is summed by numba_gradient over the torch path's samples: the same images
    and the same pose gradients, for a batch of three views (each pose keeps its own sample count)."""
    poses = poses_of(volume, 16, 20, 20.0)
    weights = torch.linspace(0.5, 1.5, 16 * 20).reshape(1, 16, 20)  # a loss that weights pixels unevenly

    def image_and_gradient(engine):
        m = torch.as_tensor(np.stack([p.world_from_camera for p in poses]), dtype=torch.float32).requires_grad_(True)
        image = engine.render_tensor(m, poses[0], level)
        (image.square() * weights).mean().backward()
        return image.detach().numpy(), m.grad.numpy()

    ours = FastRenderer(volume, device="cpu", backend="numba")
    reference = FastRenderer(volume, device="cpu", backend="torch")
    (image, gradient), (expected_image, expected) = image_and_gradient(ours), image_and_gradient(reference)
    assert expected_image.max() > 1.0 and np.abs(expected).max() > 0
    np.testing.assert_allclose(image, expected_image, rtol=1e-5, atol=1e-5 * expected_image.max())
    # Every pose's rotation and translation gradient, to float32 summation order (measured: within 6e-4).
    np.testing.assert_allclose(gradient, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
