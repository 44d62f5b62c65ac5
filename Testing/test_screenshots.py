"""Resources/screenshots.py: Slicer's slice-view compositing (vtkMRMLSliceLogic) shows the X-ray and the DRR where
their detector geometry puts them, upright; the pictures are written and the README shows them."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

slicer = pytest.importorskip("slicer")

from slicer_module_stubs import ROOT  # noqa: E402

from XrayToDRRLib.pose import perturb, standard_view  # noqa: E402
from XrayToDRRLib.xray import Xray  # noqa: E402

spec = importlib.util.spec_from_file_location("screenshots", ROOT / "Resources" / "screenshots.py")
screenshots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screenshots)

H, W = 32, 48
XRAY_SQUARE = (slice(4, 10), slice(4, 12))  # rows, columns: near the image's top-left corner
DRR_SQUARE = (slice(20, 28), slice(30, 38))  # near its bottom-right corner


def centre(square) -> np.ndarray:
    """(column, row) of a square's centre in detector pixels."""
    rows, cols = square
    return np.array([(cols.start + cols.stop - 1) / 2, (rows.start + rows.stop - 1) / 2])


@pytest.fixture
def oblique_case():
    """An oblique C-arm view (a lateral turned a few degrees), an X-ray and a DRR each with one bright square."""
    pose = perturb(standard_view("lateral", [10.0, -20.0, 30.0], 1000.0, H, W, 4.0), [12.0, -7.0, 20.0],
                   [5.0, 0.0, -8.0], [10.0, -20.0, 30.0])
    xray, drr = np.zeros((H, W), np.float32), np.zeros((H, W), np.float32)
    xray[XRAY_SQUARE] = 100.0
    drr[DRR_SQUARE] = 100.0
    return pose, Xray(xray, pose.sdd, pose.delx, pose.dely), drr


COLOR_LOGICS = []  # alive for the whole session: a scene's colour tables go with its colour logic


def red_view(pose, xray, drr, mode: str, size=(240, 160)):
    scene, colors = screenshots.new_scene()
    COLOR_LOGICS.append(colors)
    nodes = screenshots.show_xray_and_drr(scene, xray, drr, pose)
    screenshots.show(scene, nodes, mode)
    return screenshots.SliceView(scene, "Red", size)


def blobs(mask: np.ndarray) -> list[np.ndarray]:
    """(column, row) centroids of the connected regions of a view mask, largest first."""
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    order = np.argsort(sizes)[::-1]
    return [np.array(ndimage.center_of_mass(mask, labels, i + 1))[::-1] for i in order]


def on_detector(view, pose, point) -> np.ndarray:
    """The detector pixel (column, row) that a view pixel shows."""
    return pose.project(view.world(*point)[None])[0]


def test_the_overlay_shows_xray_and_drr_where_the_detector_geometry_puts_them_upright(oblique_case):
    pose, xray, drr = oblique_case
    view = red_view(pose, xray, drr, "overlay")
    grey = view.rgba()[..., 0].astype(float)
    found = blobs(grey > 0.25 * grey.max())[:2]
    assert len(found) == 2
    seen = sorted((on_detector(view, pose, p) for p in found), key=lambda p: p[0])
    assert np.allclose(seen[0], centre(XRAY_SQUARE), atol=0.75) and np.allclose(seen[1], centre(DRR_SQUARE), atol=0.75)
    # Upright and not mirrored: the X-ray's top-left square is in the view's top-left, the DRR's to its lower right.
    xray_blob, drr_blob = sorted(found, key=lambda p: p[0])
    assert xray_blob[0] < drr_blob[0] and xray_blob[1] < drr_blob[1]
    # Half the DRR over the X-ray: both squares at about the same brightness, half of what one alone would give.
    levels = [grey[int(round(p[1])), int(round(p[0]))] for p in found]
    assert levels[0] == pytest.approx(levels[1], rel=0.1)


def test_the_difference_is_bright_at_the_drr_and_dark_at_the_xray(oblique_case):
    pose, xray, drr = oblique_case
    view = red_view(pose, xray, drr, "difference")
    grey = view.rgba()[..., 0].astype(float)
    inside = grey > 0  # the detector: outside it the view is black
    middle = np.median(grey[inside])
    bright, dark = blobs(grey > middle + 60)[0], blobs(inside & (grey < middle - 60))[0]
    assert np.allclose(on_detector(view, pose, bright), centre(DRR_SQUARE), atol=0.75)
    assert np.allclose(on_detector(view, pose, dark), centre(XRAY_SQUARE), atol=0.75)


def test_the_checkerboard_starts_with_the_xray_in_the_top_left_tile(oblique_case):
    pose, _, _ = oblique_case
    xray = Xray(np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1)), pose.sdd, pose.delx, pose.dely)
    drr = np.tile(np.linspace(1, 0, W, dtype=np.float32), (H, 1))  # the X-ray's ramp reversed
    view = red_view(pose, xray, drr, "checkerboard")
    grey = view.rgba()[..., 0].astype(float)
    tile = W / 8  # tiles along the longer side
    for row, col in ((0, 0), (0, 1), (1, 0), (1, 1)):
        pixel = np.array([(col + 0.5) * tile, (row + 0.5) * tile])
        where = np.argmin([np.linalg.norm(on_detector(view, pose, (x, y)) - pixel)
                           for y in range(0, grey.shape[0], 2) for x in range(0, grey.shape[1], 2)])
        y, x = divmod(where, (grey.shape[1] + 1) // 2)
        value = grey[2 * y, 2 * x] / 255
        expected = pixel[0] / (W - 1) if (row + col) % 2 == 0 else 1 - pixel[0] / (W - 1)
        assert value == pytest.approx(expected, abs=0.12), (row, col)


def test_the_slice_view_pictures_are_written_for_each_mode(tmp_path, small_ct):
    from XrayToDRRLib.drr_engine import DRREngine
    from XrayToDRRLib.volumes import center_ras

    pose = standard_view("ap", list(center_ras(small_ct)), 1020.0, 40, 48, 8.0)
    drr = np.asarray(DRREngine(small_ct, mode="preview", device="cpu").render(pose), np.float32)
    xray = Xray(drr[::-1].copy(), pose.sdd, pose.delx, pose.dely)  # upside down: the views differ from the DRR's
    written = screenshots.write_screenshots(tmp_path, small_ct, xray, drr, pose, size=(160, 120), three_d=False)
    assert [p.name for p in written] == [f"XrayToDRR_{mode}.png" for mode in screenshots.COMPARISONS]
    pictures = [sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in written]
    for picture in pictures:
        assert picture.shape[:2] == (120, 160) and picture.std() > 5  # a picture, not a blank view
    assert not np.array_equal(pictures[0], pictures[1]) and not np.array_equal(pictures[1], pictures[2])


def test_make_screenshots_draws_the_3d_view_offscreen(tmp_path):
    """The command itself, in a child process: offscreen OpenGL may be missing (or crash) on a bare machine."""
    from job_fixtures import CHILD_ENV

    child = subprocess.run([sys.executable, str(ROOT / "Resources" / "screenshots.py"), "-o", str(tmp_path),
                            "--size", "48"], capture_output=True, text=True, env={**os.environ, **CHILD_ENV},
                           timeout=300)
    if child.returncode < 0 or (child.returncode != 0 and "OpenGL" in child.stderr):
        pytest.skip(f"no offscreen rendering here (exit {child.returncode})")
    assert child.returncode == 0, child.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"XrayToDRR_{name}.png" for name in screenshots.COMPARISONS + ("3D",))
    three_d = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "XrayToDRR_3D.png")))[..., :3].astype(int)
    background = np.abs(three_d - three_d[0, 0]).sum(axis=-1) < 8
    assert 0.05 < 1 - background.mean() < 0.95  # the C-arm and the CT fill part of the view


def test_the_readme_shows_the_committed_screenshots():
    readme = (ROOT / "README.md").read_text()
    shown = set(re.findall(r"\((Resources/Screenshots/[\w.-]+\.png)\)", readme))
    expected = {f"Resources/Screenshots/XrayToDRR_{name}.png" for name in screenshots.COMPARISONS + ("3D",)}
    assert shown == expected
    assert all((ROOT / path).is_file() for path in shown)
