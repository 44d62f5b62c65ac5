"""Cut rays: the pixels whose rays cross a face where the CT cuts the body are exactly the ones a shorter CT
renders differently, and registration leaves them out of the similarity."""

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import phantom

from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.pose import standard_view
from XrayToDRRLib.truncation import continued, cut_faces, cut_rays
from XrayToDRRLib.volumes import center_ras
from XrayToDRRRegistrationLib.preprocess import MIN_UNCUT_FRACTION, without_cut_rays


def _slab_and_whole():
    whole = phantom()            # the body ends inside the volume on every side: nothing is cut
    slab = whole[:, :, 9:27]     # the middle half in z: the body is cut at the top and bottom faces
    return whole, slab


def test_a_ct_with_air_all_round_has_no_cut_rays():
    whole, _ = _slab_and_whole()
    fast = FastRenderer(whole, device="cpu")
    for view in ("ap", "lateral"):
        pose = standard_view(view, center_ras(whole), 600.0, 48, 48, 2.0, source_to_isocenter=300.0)
        assert not cut_rays(fast, pose).any()


def test_cut_rays_are_the_pixels_that_a_slab_of_the_ct_renders_differently():
    whole, slab = _slab_and_whole()
    fast_whole, fast_slab = FastRenderer(whole, device="cpu"), FastRenderer(slab, device="cpu")
    for view in ("ap", "lateral"):
        pose = standard_view(view, center_ras(slab), 600.0, 64, 64, 2.0, source_to_isocenter=250.0)
        cut = cut_rays(fast_slab, pose)
        assert 0.05 < cut.mean() < 0.6
        assert not cut[28:36].any()                      # rows through the slab's middle run parallel to its faces
        lost = np.abs(fast_whole.render(pose, "full") - fast_slab.render(pose, "full"))
        scale = float(fast_whole.render(pose, "full").max())
        # Every ray that lost anatomy is flagged; the flagged ones lost a lot of it (the slab is half the body).
        assert lost[~cut].max() < 0.02 * scale
        assert np.median(lost[cut]) > 0.05 * scale


def test_registration_leaves_the_cut_rays_out_unless_too_few_would_remain():
    _, slab = _slab_and_whole()
    fast = FastRenderer(slab, device="cpu")
    pose = standard_view("lateral", center_ras(slab), 600.0, 32, 32, 4.0, source_to_isocenter=250.0)
    target = torch.rand(1, 1, 32, 32)
    field, left_out = without_cut_rays(fast, pose, 0, None, target)
    cut = cut_rays(fast, pose)
    assert field is not None and field.shape == target.shape and left_out == pytest.approx(1 - float(field.mean()))
    assert float(field.mean()) < 1.0 - cut.mean() + 1e-6 and float(field.mean()) > MIN_UNCUT_FRACTION
    assert not bool(field[0, 0][torch.from_numpy(cut)].any())
    # A field that the cut rays would nearly empty stays as it was.
    narrow = torch.zeros(1, 1, 32, 32)
    narrow[..., :2, :] = 1.0                             # only the top rows: all cut
    kept, left_out = without_cut_rays(fast, pose, 0, narrow, target)
    assert torch.equal(kept, narrow) and left_out == 0.0


@pytest.mark.parametrize("view", ["ap", "lateral"])
def test_a_slab_of_the_ct_registers_to_an_xray_of_the_whole_patient(tmp_path, small_ct, view):
    """The X-ray sees the whole chest, the CT only its middle half (a CT's tight scan range): with the cut rays
    left out the pose is found from 5 degrees and 15 mm off; with them, the slab's cut edges pull it away."""
    from registration_fixtures import known_pose, offset, simulated_xray

    from XrayToDRRRegistrationLib.evaluate import bone_points, pose_errors
    from XrayToDRRRegistrationLib.preprocess import prepare_xray
    from XrayToDRRRegistrationLib.register import OptimizerSettings, optimize

    n = small_ct.GetSize()[2]
    slab = small_ct[:, :, n // 4: 3 * n // 4]
    truth = known_pose(slab, view, 96, seed=0)
    prepared = prepare_xray(simulated_xray(small_ct, truth, tmp_path / "x.dcm", seed=0))
    start = offset(truth, slab, 5.0, 15.0, seed=0)
    renderer, points, center = FastRenderer(slab, device="cpu"), bone_points(slab), center_ras(slab)
    errors = {}
    for mask_cut_rays in (True, False):
        traj = optimize(renderer, prepared, start, center, OptimizerSettings(scales=[4, 2, 1],
                                                                            mask_cut_rays=mask_cut_rays))
        final = dataclasses.replace(truth, world_from_camera=traj.final)
        errors[mask_cut_rays] = pose_errors(truth, final, points, center)["mtre_mm"]
        left_out = [s["cut_rays_left_out"] for s in traj.stage_info]
        assert all(0.1 < f < 0.5 for f in left_out) if mask_cut_rays else left_out == [0.0, 0.0, 0.0], left_out
    assert errors[True] < 1.5 and errors[False] > 3 * errors[True], errors


def test_a_warning_says_how_much_of_the_xray_lies_beyond_the_ct():
    from XrayToDRRRegistrationLib.confidence import warning

    factors = {"similarity": 0.2, "sharpness": 1.0, "margin": 1.0}
    text = warning(0.2, factors, beyond_ct=0.45)
    assert "beyond the CT's scan range" in text and "45%" in text
    assert "scan range" not in warning(0.2, factors, beyond_ct=0.05)
    assert warning(0.9, factors, beyond_ct=0.45) == ""  # a trusted result carries no warning at all



def _rod_phantom(slices: int, width_fraction: float = 0.8) -> sitk.Image:
    """A body the same in every axial slice (an elliptic water cylinder with a bone rod along z), `slices` long:
    the prism that `continued` assumes, so a slab of it continued is the whole of it."""
    size = (40, 44, slices)
    j, i = np.meshgrid(np.linspace(-1, 1, size[1]), np.linspace(-1, 1, size[0]), indexing="ij")
    section = np.full(size[1::-1], -1000.0, np.float32)
    section[(i / width_fraction) ** 2 + (j / 0.8) ** 2 < 1] = 40.0
    section[((i - 0.2) / 0.15) ** 2 + (j / 0.15) ** 2 < 1] = 1200.0
    img = sitk.GetImageFromArray(np.repeat(section[None], slices, 0))
    img.SetSpacing((2.0, 2.0, 2.5))
    img.SetOrigin((-40.0, -44.0, -2.5 * slices / 2))
    return img


@pytest.mark.parametrize("level", [0, 1])
def test_a_slab_continued_past_its_cut_faces_renders_as_the_whole_body(level):
    whole = _rod_phantom(60)
    slab = whole[:, :, 19:40]  # 21 slices: at the coarser level the far block is half air
    fast_whole, fast_slab = FastRenderer(whole, device="cpu"), FastRenderer(slab, device="cpu")
    extended = continued(fast_slab, 200.0, [level])
    assert extended.levels[level] is not fast_slab.levels[level]
    assert all(a is b for n, (a, b) in enumerate(zip(extended.levels, fast_slab.levels)) if n != level)
    for view in ("ap", "lateral"):
        # A 96 mm field at the centre: past the 52 mm slab, within the 150 mm body.
        pose = standard_view(view, center_ras(slab), 600.0, 64, 64, 3.0, source_to_isocenter=300.0)
        m = torch.as_tensor(pose.world_from_camera[None], dtype=torch.float32)
        with torch.no_grad():
            truth = fast_whole.render_tensor(m, pose, level)[0].numpy()
            cut_short = fast_slab.render_tensor(m, pose, level)[0].numpy()
            guess = extended.render_tensor(m, pose, level)[0].numpy()
        scale = float(truth.max())
        assert np.abs(cut_short - truth).max() > 0.5 * scale          # the slab alone lacks half the field
        assert np.abs(guess - truth).max() < 0.03 * scale, (view, np.abs(guess - truth).max() / scale)


def test_only_the_faces_across_the_long_axis_count_as_cut():
    body = _rod_phantom(60, width_fraction=1.2)[:, :, 19:40]  # cut at both z faces and both sides in x
    fast = FastRenderer(body, device="cpu")
    assert {axis for axis, _, _ in cut_faces(fast.levels[0])} == {2}   # the sides do not count as cuts
    extended = continued(fast, 100.0, [0])
    before, after = fast.levels[0].shape, extended.levels[0].shape
    assert after[0] == before[0] and after[1] == before[1]            # the sides: the body does not go on
    assert after[2] == before[2] + 2 * 40                             # 100 mm / 2.5 mm past each z face
    assert fast.levels[0].shape[2] == before[2]                       # the renderer itself is untouched
