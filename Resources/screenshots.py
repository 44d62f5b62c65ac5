"""Pictures of what the modules show, made by Slicer's own MRML code without the application (`make screenshots`).

The scene is built by the same MRML glue the panels' Logic calls (XrayToDRRLib.mrml, XrayToDRRRegistrationLib.mrml):
the bundled chest CT, a simulated X-ray at its known C-arm pose and the DRR at that pose, both on the detector plane,
with the source and detector markups. vtkMRMLSliceLogic then composites the Red slice view exactly as Slicer's
slice view does (layers, window/level, opacity, the slice turned to the detector plane): the DRR over the X-ray,
their difference and their checkerboard. The 3D view (CT surface, source, detector with the X-ray on it, ray cone)
is drawn by slicer-core's 3D displayable managers into an offscreen render window.

    python Resources/screenshots.py [-o Resources/Screenshots] [--size 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from XrayToDRRLib import mrml
from XrayToDRRRegistrationLib import mrml as registration_mrml

OUT = Path(__file__).resolve().parent / "Screenshots"
VIEW_SIZE = (512, 512)  # pixels of each picture (width, height)
COMPARISONS = ("overlay", "difference", "checkerboard")


# --- a scene as the panels leave it ---------------------------------------------------------------------------------
def new_scene():
    """A scene with what Slicer's layout gives every scene: colour tables and the Red slice view's nodes. Returns
    (scene, colour logic): keep the logic while the scene is in use, its colour tables go with it."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene  # slicer.util helpers use it
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLScene(scene)
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetName("Red")
    red.SetLayoutName("Red")
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    composite.SetLayoutName("Red")
    return scene, colors


def show_xray_and_drr(scene, xray, drr_pixels: np.ndarray, pose, ct=None, opacity: float = 0.5) -> dict:
    """The nodes XrayToDRR's 'Render DRR' leaves (X-ray and DRR on the detector plane, DRR over the X-ray, C-arm
    markups) and the difference/checkerboard nodes of Registration's comparison view. Returns them by role."""
    nodes = {"xray": mrml.xray_to_volume_node(xray, scene, "X-ray", pose),
             "drr": mrml.drr_to_volume_node(drr_pixels, pose, scene, "DRR")}
    if ct is not None:
        nodes["ct"] = mrml.sitk_to_volume_node(ct, scene, "CT")
    nodes["source"], nodes["detector"] = mrml.add_source_and_detector_markups(pose, scene, "C-arm")
    nodes["difference"], nodes["checkerboard"] = registration_mrml.comparison_nodes(scene, nodes["xray"], nodes["drr"])
    mrml.show_overlay(scene, nodes["xray"], nodes["drr"], opacity)
    return nodes


def show(scene, nodes: dict, mode: str, opacity: float = 0.5) -> None:
    """The Red view in one of the comparison modes of the Registration panel."""
    registration_mrml.show_comparison(scene, nodes["xray"], nodes["drr"], mode, opacity,
                                      (nodes["difference"], nodes["checkerboard"]))


# --- the Red slice view ---------------------------------------------------------------------------------------------
class SliceView:
    """Slicer's slice-view pipeline for one layout name, without a window: vtkMRMLSliceLogic blends the layers."""

    def __init__(self, scene, view: str = "Red", size=VIEW_SIZE):
        self.app = slicer.vtkMRMLApplicationLogic()
        self.app.SetMRMLScene(scene)
        self.node = next(scene.GetNthNodeByClass(n, "vtkMRMLSliceNode")
                         for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))
                         if scene.GetNthNodeByClass(n, "vtkMRMLSliceNode").GetLayoutName() == view)
        self.node.SetDimensions(size[0], size[1], 1)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(self.app)
        self.logic.SetMRMLScene(scene)
        self.logic.SetSliceNode(self.node)

    def image(self, fit: bool = True) -> vtk.vtkImageData:
        """The blended slice (RGBA), as the view shows it; `fit` first fits the background in the view."""
        if fit:
            self.logic.FitSliceToBackground()
        self.logic.UpdateImageData()
        producer = self.logic.GetImageDataConnection().GetProducer()
        producer.Update()
        return producer.GetOutputDataObject(0)

    def rgba(self, fit: bool = True) -> np.ndarray:
        """(height, width, 4) uint8, row 0 at the top of the view."""
        image = self.image(fit)
        w, h, _ = image.GetDimensions()
        return np.flipud(vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1))

    def world(self, column: float, row: float) -> np.ndarray:
        """RAS of a view pixel (row 0 at the top)."""
        xy = np.array([column, self.node.GetDimensions()[1] - 1 - row, 0.0, 1.0])
        return (slicer.util.arrayFromVTKMatrix(self.node.GetXYToRAS()) @ xy)[:3]


def write_png(image: vtk.vtkImageData, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetInputData(image)
    writer.SetFileName(str(path))
    writer.Write()
    return path


# --- the 3D view ----------------------------------------------------------------------------------------------------
def ray_cone_model(scene, pose, name: str = "C-arm ray cone"):
    """A model node: the pyramid from the source to the detector's corners (what the X-ray sees)."""
    h, w = pose.height, pose.width
    corners = pose.pixel_to_world([-0.5, w - 0.5, w - 0.5, -0.5], [-0.5, -0.5, h - 0.5, h - 0.5])
    points = vtk.vtkPoints()
    points.InsertNextPoint(*pose.source)
    for corner in corners:
        points.InsertNextPoint(*corner)
    faces = vtk.vtkCellArray()
    for n in range(4):
        faces.InsertNextCell(3, [0, 1 + n, 1 + (n + 1) % 4])
    cone = vtk.vtkPolyData()
    cone.SetPoints(points)
    cone.SetPolys(faces)
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    model.SetAndObservePolyData(cone)
    model.CreateDefaultDisplayNodes()
    display = model.GetDisplayNode()
    display.SetColor(1.0, 0.85, 0.2)
    display.SetOpacity(0.12)
    return model


def surface_model(scene, volume_node, threshold: float, name: str, color, opacity: float):
    """A model node of the volume's iso-surface at `threshold`, in RAS (the CT's skin or bone)."""
    contour = vtk.vtkFlyingEdges3D()
    contour.SetInputData(volume_node.GetImageData())
    contour.SetValue(0, threshold)
    to_ras = vtk.vtkTransform()
    ijk = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk)
    to_ras.SetMatrix(ijk)
    move = vtk.vtkTransformPolyDataFilter()
    move.SetTransform(to_ras)
    move.SetInputConnection(contour.GetOutputPort())
    move.Update()
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    model.SetAndObservePolyData(move.GetOutput())
    model.CreateDefaultDisplayNodes()
    model.GetDisplayNode().SetColor(*color)
    model.GetDisplayNode().SetOpacity(opacity)
    model.GetDisplayNode().ScalarVisibilityOff()  # one colour, not the HU values through a colour table
    return model


def detector_model(scene, xray_node, name: str = "detector image"):
    """A model node of the detector plane textured with the X-ray, where the X-ray node's geometry puts it."""
    dims = xray_node.GetImageData().GetDimensions()
    matrix = vtk.vtkMatrix4x4()
    xray_node.GetIJKToRASMatrix(matrix)
    ijk = slicer.util.arrayFromVTKMatrix(matrix)
    corner = lambda i, j: (ijk @ [i, j, 0.0, 1.0])[:3]  # noqa: E731
    plane = vtk.vtkPlaneSource()
    plane.SetOrigin(*corner(-0.5, -0.5))
    plane.SetPoint1(*corner(dims[0] - 0.5, -0.5))
    plane.SetPoint2(*corner(-0.5, dims[1] - 0.5))
    plane.Update()
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    model.SetAndObservePolyData(plane.GetOutput())
    model.CreateDefaultDisplayNodes()
    grey = vtk.vtkImageMapToWindowLevelColors()
    grey.SetInputData(xray_node.GetImageData())
    low, high = np.percentile(slicer.util.arrayFromVolume(xray_node), [1, 99])
    grey.SetWindow(float(max(high - low, 1e-6)))
    grey.SetLevel(float((high + low) / 2))
    grey.SetOutputFormatToRGB()
    model.GetDisplayNode().SetTextureImageDataConnection(grey.GetOutputPort())
    model.GetDisplayNode().SetColor(1.0, 1.0, 1.0)
    return model


def three_d_view(scene, nodes: dict, pose, size=VIEW_SIZE, skin_hu: float = -300.0) -> vtk.vtkImageData:
    """The 3D view rendered offscreen by slicer-core's displayable managers (models and markups)."""
    for node in (nodes["source"], nodes["detector"]):
        node.CreateDefaultDisplayNodes()
    nodes["skin"] = surface_model(scene, nodes["ct"], skin_hu, "CT skin", (0.9, 0.75, 0.65), 0.2)
    nodes["bone"] = surface_model(scene, nodes["ct"], 300.0, "CT bone", (0.95, 0.95, 0.9), 1.0)
    nodes["cone"] = ray_cone_model(scene, pose)
    nodes["image"] = detector_model(scene, nodes["xray"])
    view = scene.AddNewNodeByClass("vtkMRMLViewNode")
    view.SetLayoutName("1")
    view.SetBoxVisible(False)
    view.SetAxisLabelsVisible(False)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # displayable managers observe it (never started here)
    interactor.SetRenderWindow(window)
    app = slicer.vtkMRMLApplicationLogic()
    app.SetMRMLScene(scene)
    factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app)
    for manager in ("vtkMRMLModelDisplayableManager", "vtkMRMLMarkupsDisplayableManager"):
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    group = factory.InstantiateDisplayableManagers(renderer)
    group.SetMRMLDisplayableNode(view)
    # The C-arm from beside and a little above the source (the detector's image side faces the camera), all of
    # source and detector in the picture.
    h, w = pose.height, pose.width
    corners = pose.pixel_to_world([-0.5, w - 0.5, w - 0.5, -0.5], [-0.5, -0.5, h - 0.5, h - 0.5])
    points = np.vstack([np.asarray(pose.source)[None], corners])
    beam = np.asarray(corners).mean(axis=0) - np.asarray(pose.source)
    side = np.cross(beam, [0.0, 0.0, 1.0])
    side = side / np.linalg.norm(side) if np.linalg.norm(side) > 1e-6 else np.array([1.0, 0.0, 0.0])
    middle = points.mean(axis=0)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*middle)
    camera.SetPosition(*(middle + 0.8 * side + 0.3 * np.array([0.0, 0.0, 1.0]) - 0.6 * beam / np.linalg.norm(beam)))
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera(*np.ravel(np.column_stack([points.min(axis=0), points.max(axis=0)])))
    renderer.SetBackground(0.12, 0.12, 0.16)
    renderer.ResetCameraClippingRange()
    group.RequestRender()
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    image = vtk.vtkImageData()
    image.DeepCopy(grab.GetOutput())
    group.SetMRMLDisplayableNode(None)
    return image


# --- the sample case ------------------------------------------------------------------------------------------------
def sample_case(size: int = 256, seed: int = 0, device: str = "cpu"):
    """The Sample Data case of the XrayToDRR module: the bundled chest CT, the simulated X-ray at its known pose
    (the module's sampleXrayPose) and the DRR at that pose. Returns (CT, Xray, DRR pixels, pose)."""
    import dataclasses

    import SimpleITK as sitk

    from XrayToDRRLib.demo import bundled_ct, known_pose
    from XrayToDRRLib.drr_engine import DRREngine
    from XrayToDRRLib.simulate import simulate_xray
    from XrayToDRRLib.volumes import center_ras, read_volume
    from XrayToDRRLib.xray import Xray

    ct = read_volume(bundled_ct()[0])
    pose = known_pose(size, seed)
    shift = np.eye(4)
    shift[:3, 3] = center_ras(ct)
    pose = dataclasses.replace(pose, world_from_camera=shift @ pose.world_from_camera)
    pixels = simulate_xray(ct, pose, seed, device=device)
    drr = DRREngine(ct, mode="hq", device=device).render(pose)
    small = sitk.Shrink(ct, [2, 2, 2])  # the 3D view's surfaces need no more
    return small, Xray(pixels, pose.sdd, pose.delx, pose.dely), np.asarray(drr, np.float32), pose


def write_screenshots(out: Path, ct, xray, drr, pose, size=VIEW_SIZE, three_d: bool = True) -> list[Path]:
    """Red view in each comparison mode (+ the 3D view) as PNGs in `out`: XrayToDRR_<mode>.png, XrayToDRR_3D.png."""
    scene, colors = new_scene()  # noqa: F841 (kept alive: its colour tables)
    nodes = show_xray_and_drr(scene, xray, drr, pose, ct)
    view = SliceView(scene, "Red", size)
    written = []
    for mode in COMPARISONS:
        show(scene, nodes, mode)
        written.append(write_png(view.image(), out / f"XrayToDRR_{mode}.png"))
    if three_d:
        written.append(write_png(three_d_view(scene, nodes, pose, size), out / "XrayToDRR_3D.png"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    parser.add_argument("--size", type=int, default=256, help="detector pixels of the sample X-ray")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    for path in write_screenshots(args.output, *sample_case(args.size, device=args.device)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
