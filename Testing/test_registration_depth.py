"""Depth (along the beam) is pinned by magnification alone, which moves the image far less per millimetre than an
in-plane shift: the optimiser steps along the beam `depth_gain` times farther, so a start that is wrong mostly in
depth is corrected within the stages' iterations."""

import dataclasses

import numpy as np
import pytest
from registration_fixtures import known_pose, simulated_xray

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.pose import standard_view
from XrayToDRRLib.volumes import center_ras
from XrayToDRRRegistrationLib.preprocess import prepare_xray
from XrayToDRRRegistrationLib.register import OptimizerSettings, check_settings, depth_gain, optimize


def test_depth_gain_is_sdd_over_the_detectors_rms_radius():
    square = standard_view("ap", np.zeros(3), sdd=1200.0, height=256, width=256, delx=1.5)  # 384 mm wide
    assert depth_gain(square, OptimizerSettings()) == pytest.approx(1200.0 / (384.0 / np.sqrt(6)), rel=0.01)
    shifted = dataclasses.replace(square, x0=100.0)  # principal point off the centre: larger radii, smaller gain
    assert depth_gain(shifted, OptimizerSettings()) < depth_gain(square, OptimizerSettings())
    assert depth_gain(square, OptimizerSettings(depth_gain=1.0)) == 1.0
    for bad in (0.0, -2.0, float("nan")):
        with pytest.raises(InputError, match="depth-gain"):
            check_settings(OptimizerSettings(depth_gain=bad))


def _along_beam(pose, center, mm: float):
    """`pose` with the patient moved `mm` farther from the source along the ray through `center`."""
    m = pose.camera_from_world.copy()
    c = m[:3, :3] @ center + m[:3, 3]
    m[:3, 3] += mm * c / np.linalg.norm(c)
    return dataclasses.replace(pose, world_from_camera=np.linalg.inv(m))


def test_the_finest_stage_corrects_a_depth_error_left_by_the_coarse_ones(tmp_path, small_ct):
    """The default finest stage (128 px, 20 iterations, a quarter of the first stage's steps) from a pose 15 mm
    too far from the source: with one step size for all axes it can move the depth by only about 5 mm."""
    center = center_ras(small_ct)
    truth = known_pose(small_ct, "ap", 128, seed=4)
    prepared = prepare_xray(simulated_xray(small_ct, truth, tmp_path / "x.dcm", seed=4))
    start = _along_beam(truth, center, 15.0)
    renderer = FastRenderer(small_ct, device="cpu")
    d = OptimizerSettings()
    finest = dict(scales=[1.0], max_n_itrs=d.finest_max_itrs, lr_rot=d.lr_rot / 4, lr_xyz=d.lr_xyz / 4)
    errors = {}
    for gain in (None, 1.0):
        traj = optimize(renderer, prepared, start, center, OptimizerSettings(**finest, depth_gain=gain))
        final = dataclasses.replace(start, world_from_camera=traj.final)
        errors[gain] = abs(float(final.depth(center)[0] - truth.depth(center)[0]))
    assert errors[None] < 3.0, errors
    assert errors[1.0] > 9.0, errors
