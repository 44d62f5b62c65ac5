"""XrayToDRRRegistration 3D Slicer module: register an X-ray to a CT, review the pose live, train pose models.

The panel (XrayToDRRRegistrationWidget) only wires widgets to XrayToDRRRegistrationLogic, whose methods mirror the
CLI verbs (`register`, `train`, `finetune`) with the same defaults and return MRML nodes:

    logic = slicer.util.getModuleLogic("XrayToDRRRegistration")  # or XrayToDRRRegistrationLogic()
    pose, drr, metrics = logic.register(xrayNode, ctNode, model="/models/patient.pth")   # xraytodrr register
    pose, drr, metrics = logic.register(xrayNode, ctNode, initPose=poseNode)             # from the current transform
    review = logic.startReview(pose, ctNode, xrayNode)       # live low-resolution DRR over the X-ray, NCC
    review.update([0, 0, 2, 5, 0, 0])            # rx, ry, rz (deg, about the volume centre), tx, ty, tz (mm)
    logic.accept(pose, review)                               # review.json + the accepted list (Translation module)
    patient, views, drrs, metrics = logic.registerViews([apNode, latNode], ctNode, rig="rig.json", initPose=poseNode)

The pose is a linear transform node (matrix = world_from_camera, XrayToDRRLib.mrml); the DRR lies on the detector
plane over the X-ray (Red view: overlay, difference or checkerboard); the source and detector are markups; metrics
are a table node. Several views of one patient (`register --multiview`): a patient pose transform with one child
transform per view (XrayToDRRRegistrationLib.mrml.multiview_pose_nodes), each view in its own slice view. Verbs run
in child processes (XrayToDRR's XrayToDRRTask): the console waits (wait=True), the panel polls with a QTimer
(wait=False) and can cancel.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional, Union

import numpy as np
import qt
import slicer
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLLinearTransformNode, vtkMRMLMarkupsFiducialNode,
                    vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _xrayToDRRModule():
    """The XrayToDRR module file (background tasks, dependencies, shared Logic helpers): imported by name in
    Slicer (module folders are on sys.path), else loaded from the sibling folder of the source tree (where the
    repository root on sys.path would make `XrayToDRR` the folder, a namespace package)."""
    try:
        import XrayToDRR
    except ImportError:
        XrayToDRR = None
    if not hasattr(XrayToDRR, "XrayToDRRTask"):
        path = Path(__file__).resolve().parent.parent / "XrayToDRR" / "XrayToDRR.py"
        spec = importlib.util.spec_from_file_location("XrayToDRR", path)
        XrayToDRR = importlib.util.module_from_spec(spec)
        sys.modules["XrayToDRR"] = XrayToDRR
        spec.loader.exec_module(XrayToDRR)
    return XrayToDRR


_XrayToDRR = _xrayToDRRModule()
XrayToDRRTask = _XrayToDRR.XrayToDRRTask
XrayToDRRLogic = _XrayToDRR.XrayToDRRLogic
TaskRunnerMixin = _XrayToDRR.TaskRunnerMixin

REVIEW_VALUES = ("reviewRx", "reviewRy", "reviewRz", "reviewTx", "reviewTy", "reviewTz")
RANGE_NAMES = ("r1", "r2", "r3", "tx", "ty", "tz")
REGISTERED_POSE = "XrayToDRR.registeredPose"  # transform node attribute: the registration result (JSON)
FOLDER = "XrayToDRR.registrationFolder"       # transform node attribute: its registration output folder
NEEDS_RESULT = "Register first (or select a pose transform under Result)."


def _abs(path) -> Path:
    """A path as the user meant it from this process (jobs run in their own folder)."""
    return Path(path).expanduser().resolve()


def _path(value) -> Optional[Path]:
    """A parameter-node path, None when unset (the wrapper's empty Path is '.')."""
    if value is None or str(value).strip() in ("", "."):
        return None
    return Path(value)


#
# XrayToDRRRegistration
#


class XrayToDRRRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "X-ray to DRR Registration"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = ["XrayToDRR"]
        self.parent.contributors = ["XrayToDRR developers"]
        self.parent.helpText = f"""
Register a 2D X-ray to the patient's CT (initialised by a pose model, the current transform, a standard view, the
DICOM C-arm angles or landmarks), review the pose live (six sliders re-render a DRR over the X-ray, with NCC),
refine, accept or reject it, and train or finetune the pose model. Long steps run in the background.
Documentation: the "3D Slicer" section of README.md in the XrayToDRR source (no public home yet).
"""
        self.parent.acknowledgementText = """
Pose regression and registration follow xvr (V. Gopalakrishnan, N. Dey, P. Golland) and DiffDRR; built on PyTorch.
"""


#
# XrayToDRRRegistrationParameterNode
#


@parameterNodeWrapper
class XrayToDRRRegistrationParameterNode:
    # inputs
    ctVolume: vtkMRMLScalarVolumeNode
    segmentation: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    labels: str = ""
    xrayVolume: vtkMRMLScalarVolumeNode
    # pose model
    modelCheckpoint: Path
    modelFolder: Path
    modelSdd: Annotated[float, WithinRange(1.0, 5000.0)] = 1020.0
    modelHeight: Annotated[int, WithinRange(16, 2048)] = 128
    modelDelx: Annotated[float, WithinRange(0.01, 100.0)] = 2.0
    orientation: Annotated[str, Choice(["AP", "PA"])] = "AP"
    epochs: Annotated[int, WithinRange(1, 100000)] = 100
    batchesPerEpoch: Annotated[int, WithinRange(1, 100000)] = 100
    batchSize: Annotated[int, WithinRange(1, 4096)] = 32
    finetuneEpochs: Annotated[int, WithinRange(1, 100000)] = 10
    finetuneBatches: Annotated[int, WithinRange(1, 100000)] = 25
    rescale: Annotated[float, WithinRange(0.1, 8.0)] = 1.0
    modelRenderer: Annotated[str, Choice(["auto", "fast", "trilinear", "siddon"])] = "auto"
    learningRate: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    poseRanges: str = ""
    trainSeed: Annotated[int, WithinRange(0, 2 ** 31 - 1)] = 0
    trainOptions: str = ""
    # registration
    initialization: Annotated[str, Choice(["model", "pose", "view", "dicom", "landmarks"])] = "model"
    initPose: vtkMRMLLinearTransformNode
    initView: Annotated[str, Choice(["ap", "pa", "lateral", "right-lateral", "auto"])] = "ap"
    searchView: Annotated[str, Choice(["auto", "ap", "pa", "lateral", "right-lateral"])] = "auto"
    searchTopK: Annotated[int, WithinRange(1, 20)] = 4
    candidate: vtkMRMLLinearTransformNode
    xrayLandmarks: vtkMRMLMarkupsFiducialNode
    ctLandmarks: vtkMRMLMarkupsFiducialNode
    registrationFolder: Path
    crop: Annotated[int, WithinRange(0, 4096)] = 0
    subtractBackground: bool = False
    linearize: bool = False
    collimator: Annotated[str, Choice(["auto", "none"])] = "auto"
    similarity: Annotated[str, Choice(["gmncc", "ncc", "mncc", "gradncc", "mi"])] = "gmncc"
    scales: str = "auto"
    lrRot: Annotated[float, WithinRange(1e-6, 1.0)] = 1e-2
    lrXyz: Annotated[float, WithinRange(1e-4, 100.0)] = 1.0
    patience: Annotated[int, WithinRange(1, 1000)] = 8
    maxIterations: Annotated[int, WithinRange(1, 100000)] = 200
    finalRenderer: Annotated[str, Choice(["auto", "siddon", "trilinear", "fast"])] = "auto"
    saveImages: bool = False
    translateCheckpoint: Path
    registerOptions: str = ""
    # several views of one patient (the X-rays: a checkable combo box, which the wrapper cannot bind)
    multiViewMode: Annotated[str, Choice(["rigid-rig", "independent"])] = "rigid-rig"
    multiViewRig: Path
    # result and review
    resultPose: vtkMRMLLinearTransformNode
    truePose: vtkMRMLLinearTransformNode
    viewMode: Annotated[str, Choice(["overlay", "difference", "checkerboard"])] = "overlay"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    checkerTiles: Annotated[int, WithinRange(2, 64)] = 8
    livePreview: bool = False
    reviewRx: Annotated[float, WithinRange(-45.0, 45.0)] = 0.0
    reviewRy: Annotated[float, WithinRange(-45.0, 45.0)] = 0.0
    reviewRz: Annotated[float, WithinRange(-45.0, 45.0)] = 0.0
    reviewTx: Annotated[float, WithinRange(-150.0, 150.0)] = 0.0
    reviewTy: Annotated[float, WithinRange(-150.0, 150.0)] = 0.0
    reviewTz: Annotated[float, WithinRange(-150.0, 150.0)] = 0.0


#
# Live pose review (Qt-free: the panel drives it from a single-shot QTimer)
#


class _ReviewValues:
    """The six review values of a pose transform node (`poseNode`) about `center`, relative to `base`: shared by
    the single- and multi-view reviews, which differ only in what they re-render (`update`)."""

    def valuesFromNode(self) -> np.ndarray:
        """The values that give the transform node's current matrix (after a direct edit)."""
        from XrayToDRRLib import mrml
        from XrayToDRRRegistrationLib.mrml import review_values

        self.values = review_values(self.base, mrml.pose_from_transform_node(self.poseNode).world_from_camera,
                                    self.center)
        return self.values

    def reset(self) -> float:
        """Back to the registration result."""
        return self.update(np.zeros(6))


class XrayToDRRPoseReview(_ReviewValues):
    """Moves a pose transform node by the six review values and re-renders a low-resolution DRR over the X-ray.

    The CT's FastRenderer is prepared once (by the Logic); each `update` renders `render(pose, 'preview')` on a
    detector of `size` pixels along its longer side (same field of view), writes it into one preview volume node
    lying on the X-ray's grid (image space: what the reviewer compares), and returns the NCC with the X-ray
    reduced to the same size. `base` (the registration result, kept on the node as XrayToDRR.registeredPose) is
    what the values are relative to and what `reset` returns to. `field` (the X-ray's size, non-zero = exposed):
    NCC is measured there only, as registration did (its field.png)."""

    def __init__(self, scene, renderer, poseNode, xrayNode, center, size: int = 128, name: Optional[str] = None,
                 field: Optional[np.ndarray] = None):
        from XrayToDRRLib import mrml
        from XrayToDRRLib.pose import Pose
        from XrayToDRRRegistrationLib import mrml as review

        self.scene, self.renderer, self.poseNode, self.xrayNode = scene, renderer, poseNode, xrayNode
        self.center = np.asarray(center, dtype=np.float64)
        registered = poseNode.GetAttribute(REGISTERED_POSE)
        self.base = Pose.from_dict(json.loads(registered)) if registered else mrml.pose_from_transform_node(poseNode)
        if not registered:
            poseNode.SetAttribute(REGISTERED_POSE, json.dumps(self.base.to_dict()))
        self.small = review.preview_pose(self.base, size)
        xray = slicer.util.arrayFromVolume(xrayNode)[0]
        self.target = review.resize_area(xray, self.small.height, self.small.width)
        self.mask = None  # the exposed field (registration's field.png) at the preview size: where NCC is measured
        if field is not None and np.asarray(field).shape == xray.shape:
            self.mask = review.resize_area(np.asarray(field, dtype=np.float32) > 0, *self.target.shape) > 0.5
        self.node = review.image_node(scene, name or f"{poseNode.GetName()} review DRR",
                                      np.zeros((self.small.height, self.small.width), np.float32), xrayNode)
        self.values = np.zeros(6)
        self.ncc = None
        self.seconds = None

    def pose(self, values=None):
        """The pose the values give (default: the current values)."""
        from XrayToDRRRegistrationLib.mrml import review_pose

        return review_pose(self.base, self.values if values is None else values, self.center)

    def update(self, values) -> float:
        """Apply the values to the transform node, render the preview, return the NCC with the X-ray."""
        from XrayToDRRRegistrationLib.mrml import set_pose_matrix

        self.values = np.asarray(values, dtype=np.float64).reshape(6)
        pose = self.pose()
        set_pose_matrix(self.poseNode, pose)
        return self.render(pose)

    def render(self, pose=None) -> float:
        """Re-render the preview at `pose` (default: the transform node's) without touching the node."""
        import dataclasses

        from XrayToDRRLib import mrml
        from XrayToDRRRegistrationLib import mrml as review

        start = time.perf_counter()
        pose = pose if pose is not None else mrml.pose_from_transform_node(self.poseNode)
        small = dataclasses.replace(self.small, world_from_camera=pose.world_from_camera)
        image = self.renderer.render(small, "preview")
        review.image_node(self.scene, self.node.GetName(), image, self.xrayNode, node=self.node)
        self.ncc = review.ncc(image, self.target, self.mask)
        self.seconds = time.perf_counter() - start
        return self.ncc

    def close(self) -> None:
        if self.node is not None and self.scene.GetNodeByID(self.node.GetID()) is not None:
            self.scene.RemoveNode(self.node)
        self.node = None


class XrayToDRRMultiViewReview(_ReviewValues):
    """The live review of a multi-view result: the six values move the patient pose (the parent transform, view
    1's camera; XrayToDRRPoseReview's values, about the CT centre) and every view, a child of it, re-renders its
    preview DRR over its own X-ray. `ncc` is the mean of the views' (`nccs`). Same interface as
    XrayToDRRPoseReview (update, render, valuesFromNode, reset, close; `node` is view 1's preview)."""

    def __init__(self, scene, renderer, parentNode, viewNodes, center, size: int = 128, fields=None):
        from XrayToDRRLib.pose import Pose

        self.scene, self.poseNode = scene, parentNode
        self.center = np.asarray(center, dtype=np.float64)
        self.base = Pose.from_dict(json.loads(parentNode.GetAttribute(REGISTERED_POSE)))
        fields = list(fields or []) + [None] * len(viewNodes)
        self.views = [XrayToDRRPoseReview(scene, renderer, node, node.GetNodeReference("XrayToDRR.xray"), center,
                                          size, f"{node.GetName()} review DRR", field)
                      for node, field in zip(viewNodes, fields)]
        self.values = np.zeros(6)
        self.ncc = self.seconds = None
        self.nccs = []

    @property
    def node(self):
        return self.views[0].node if self.views else None

    def pose(self, values=None):
        """The patient pose (view 1's camera) the values give."""
        from XrayToDRRRegistrationLib.mrml import review_pose

        return review_pose(self.base, self.values if values is None else values, self.center)

    def update(self, values) -> float:
        """Move the patient pose by the values, re-render every view; returns the mean NCC."""
        from XrayToDRRRegistrationLib.mrml import set_pose_matrix

        self.values = np.asarray(values, dtype=np.float64).reshape(6)
        set_pose_matrix(self.poseNode, self.pose())
        return self.render()

    def render(self, pose=None) -> float:
        """Re-render every view at its transform node's pose under the patient pose as it is now (`pose`: unused,
        XrayToDRRPoseReview's signature)."""
        start = time.perf_counter()
        self.nccs = [view.render() for view in self.views]
        self.ncc = float(np.mean(self.nccs))
        self.seconds = time.perf_counter() - start
        return self.ncc

    def close(self) -> None:
        from XrayToDRRRegistrationLib.mrml import remove_with_comparisons

        for view in self.views:
            remove_with_comparisons(self.scene, view.node)
            view.node = None
        self.views = []


#
# XrayToDRRRegistrationWidget
#


class XrayToDRRRegistrationWidget(TaskRunnerMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to XrayToDRRRegistrationLogic: background jobs polled by a QTimer; the live review
    re-renders from a single-shot QTimer so slider moves are coalesced and the GUI stays responsive."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._review = None
        self._observedPose = None
        self._syncing = False  # values being set from the node: do not move the node again
        self._applying = False  # the node being moved by the review: do not read it back
        self._result = None  # (xray node shown, drr node, (difference, checkerboard) or None)
        self._reviewComparison = None  # (difference, checkerboard) of the live preview
        self._renderNode = False  # next review render: the node's own pose (a direct edit), not the sliders'

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XrayToDRRRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XrayToDRRRegistrationLogic()

        self._reviewTimer = qt.QTimer()
        self._reviewTimer.setSingleShot(True)
        self._reviewTimer.setInterval(15)
        self._reviewTimer.connect("timeout()", self._renderReview)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.setupTaskRunner([self.ui.trainButton, self.ui.resumeTrainingButton, self.ui.finetuneButton,
                              self.ui.registerButton, self.ui.refineButton, self.ui.evaluateButton,
                              self.ui.view3dButton, self.ui.animateButton, self.ui.findPoseButton,
                              self.ui.registerViewsButton])
        self.ui.modelFromXrayButton.connect("clicked(bool)", self.onModelFromXray)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.resumeTrainingButton.connect("clicked(bool)", self.onResumeTraining)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetune)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.findPoseButton.connect("clicked(bool)", self.onFindPose)
        self.ui.registerViewsButton.connect("clicked(bool)", self.onRegisterViews)
        self.ui.useCandidateButton.connect("clicked(bool)", self.onUseCandidate)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.acceptButton.connect("clicked(bool)", lambda checked=False: self.onDecision("accept"))
        self.ui.rejectButton.connect("clicked(bool)", lambda checked=False: self.onDecision("reject"))
        self.ui.resetButton.connect("clicked(bool)", self.onReset)
        self.ui.openFigureButton.connect("clicked(bool)", self.onOpenFigure)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.view3dButton.connect("clicked(bool)", self.onView3d)
        self.ui.animateButton.connect("clicked(bool)", self.onAnimate)
        self.ui.livePreviewCheckBox.connect("toggled(bool)", self.onLivePreview)
        self.ui.viewModeComboBox.connect("currentIndexChanged(int)", lambda index: self.updateComparison())
        self.ui.opacitySliderWidget.connect("valueChanged(double)", lambda value: self.updateComparison())
        self.ui.checkerTilesSpinBox.connect("valueChanged(int)", lambda value: self.updateComparison(True))
        self.ui.resultPoseSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onResultPoseChanged)
        for name in ("reviewRxSliderWidget", "reviewRySliderWidget", "reviewRzSliderWidget", "reviewTxSliderWidget",
                     "reviewTySliderWidget", "reviewTzSliderWidget"):
            getattr(self.ui, name).connect("valueChanged(double)", self.onReviewValueChanged)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cleanupTaskRunner()
        self._reviewTimer.stop()
        self._closeReview()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self._closeReview()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            kind = node.GetAttribute("XrayToDRR.kind")
            if not p.xrayVolume and kind == "xray":
                p.xrayVolume = node
            if not p.ctVolume and kind is None and not node.IsA("vtkMRMLLabelMapVolumeNode"):
                p.ctVolume = node

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # --- pose model ------------------------------------------------------------------------------------------------
    def onModelFromXray(self, checked=False) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("The X-ray has no detector geometry.", waitCursor=True):
            p.modelSdd, p.modelDelx = self.logic.modelDetectorFromXray(p.xrayVolume, p.modelHeight)

    def _modelDone(self, checkpoint) -> None:
        self._parameterNode.modelCheckpoint = checkpoint
        self._parameterNode.initialization = "model"

    def onTrain(self, checked=False) -> None:
        p = self._parameterNode
        if self._task is None and not _path(p.modelFolder):
            p.modelFolder = self.logic.newFolder("pose-model") / "run"
        self._start(self.ui.trainButton, lambda: self.logic.train(
            p.ctVolume, _path(p.modelFolder), p.modelSdd, p.modelHeight, p.modelDelx, orientation=p.orientation,
            renderer=None if p.modelRenderer == "auto" else p.modelRenderer, nEpochs=p.epochs,
            nBatchesPerEpoch=p.batchesPerEpoch, batchSize=p.batchSize, lr=p.learningRate or None,
            ranges=self.logic.parseRanges(p.poseRanges), seed=p.trainSeed, extraArgs=p.trainOptions,
            wait=False), self._modelDone)

    def onResumeTraining(self, checked=False) -> None:
        p = self._parameterNode
        if self._task is None and not _path(p.modelFolder):
            slicer.util.infoDisplay("Choose the run folder to resume (it holds last.pth).", windowTitle="XrayToDRR")
            return
        self._start(self.ui.resumeTrainingButton, lambda: self.logic.train(
            None, _path(p.modelFolder), resume=_path(p.modelFolder), wait=False), self._modelDone)

    def onFinetune(self, checked=False) -> None:
        p = self._parameterNode
        folder = self.logic.newFolder("finetune") / "run" if self._task is None else None
        self._start(self.ui.finetuneButton, lambda: self.logic.finetune(
            p.ctVolume, _path(p.modelCheckpoint), folder, lr=p.learningRate or None, nEpochs=p.finetuneEpochs,
            nBatchesPerEpoch=p.finetuneBatches, rescale=p.rescale, wait=False), self._modelDone)

    # --- registration ----------------------------------------------------------------------------------------------
    def _registerArguments(self) -> dict:
        p = self._parameterNode
        init = p.initialization
        return dict(
            model=_path(p.modelCheckpoint) if init == "model" else None,
            initPose=p.initPose if init == "pose" else None,
            initView=p.initView if init == "view" else None,
            initDicom=init == "dicom",
            landmarks=(p.xrayLandmarks, p.ctLandmarks) if init == "landmarks" else None,
            segmentationNode=p.segmentation, labels=p.labels, crop=p.crop,
            subtractBackground=p.subtractBackground, linearize=p.linearize, collimator=p.collimator,
            similarity=p.similarity, scales=p.scales.strip() or "auto", lrRot=p.lrRot, lrXyz=p.lrXyz,
            patience=p.patience, maxIterations=p.maxIterations, renderer=p.finalRenderer,
            saveImages=p.saveImages, translate=_path(p.translateCheckpoint), extraArgs=p.registerOptions,
            opacity=p.opacity)

    def _registered(self, result) -> None:
        """A result of register or registerViews: (pose node, ..., metrics table node)."""
        p = self._parameterNode
        poseNode, table = result[0], result[-1]
        self._closeReview()
        p.resultPose = poseNode
        p.registrationFolder = Path(poseNode.GetAttribute(FOLDER))
        for name in REVIEW_VALUES:
            setattr(p, name, 0.0)
        self._result = None
        self.updateComparison(True)
        self._showMetrics(table)
        self._showFigure()
        self._warnIfDoubtful(p.registrationFolder)
        slicer.util.resetSliceViews()
        if p.livePreview:
            self.onLivePreview(True)

    def _warnIfDoubtful(self, folder) -> None:
        """A registration that is probably wrong says so (the engine's confidence warning), never looks like a
        success."""
        from XrayToDRRRegistrationLib.mrml import confidence_of

        confidence, warning = confidence_of(_path(folder))
        if warning:
            self.ui.metricsLabel.text = f"WARNING: {warning}\n" + self.ui.metricsLabel.text
            slicer.util.warningDisplay(warning, windowTitle="XrayToDRR: registration probably wrong")

    def onFindPose(self, checked=False) -> None:
        p = self._parameterNode
        self._start(self.ui.findPoseButton, lambda: self.logic.findPose(
            p.xrayVolume, p.ctVolume, view=p.searchView, topK=p.searchTopK, wait=False), self._posesFound)

    def _posesFound(self, result) -> None:
        nodes, table = result
        p = self._parameterNode
        p.candidate = nodes[0] if nodes else None
        lines = [node.GetName() for node in nodes]
        self.ui.candidatesLabel.text = "\n".join(lines) or "no candidate"
        if nodes:
            self._reviewCandidate(nodes[0])

    def _reviewCandidate(self, node) -> None:
        """Review a candidate as a result: the live preview DRR at its pose over the X-ray (sliders, NCC)."""
        p = self._parameterNode
        self._closeReview()
        for name in REVIEW_VALUES:
            setattr(p, name, 0.0)
        self._result = None
        p.resultPose = node
        p.registrationFolder = Path(node.GetAttribute(FOLDER))
        if p.livePreview:
            self.onLivePreview(True)
        else:
            p.livePreview = True  # the checkbox's binding starts the review

    def onUseCandidate(self, checked=False) -> None:
        p = self._parameterNode
        if p.candidate is None:
            slicer.util.errorDisplay("Find pose first, then choose a candidate.", windowTitle="XrayToDRR")
            return
        p.initialization = "pose"
        p.initPose = p.candidate
        self._reviewCandidate(p.candidate)

    def onRegister(self, checked=False) -> None:
        p = self._parameterNode
        self._start(self.ui.registerButton, lambda: self.logic.register(
            p.xrayVolume, p.ctVolume, outputFolder=None, wait=False, **self._registerArguments()), self._registered)

    def onRegisterViews(self, checked=False) -> None:
        p = self._parameterNode
        self._start(self.ui.registerViewsButton, lambda: self.logic.registerViews(
            self.ui.multiViewXraysSelector.checkedNodes(), p.ctVolume, mode=p.multiViewMode,
            rig=_path(p.multiViewRig), wait=False, **self._registerArguments()), self._registered)

    def onRefine(self, checked=False) -> None:
        """Register again, initialised at the pose under review."""
        p = self._parameterNode
        if p.resultPose is None:
            slicer.util.infoDisplay(NEEDS_RESULT, windowTitle="XrayToDRR")
            return
        arguments = self._registerArguments()
        arguments.update(model=None, initPose=p.resultPose, initView=None, initDicom=False, landmarks=None)
        self._start(self.ui.refineButton, lambda: self.logic.register(
            p.xrayVolume, p.ctVolume, wait=False, **arguments), self._registered)

    def onEvaluate(self, checked=False) -> None:
        p = self._parameterNode
        if self._task is None and p.resultPose is None:
            slicer.util.infoDisplay(NEEDS_RESULT, windowTitle="XrayToDRR")
            return

        def done(table):
            self._showMetrics(table)
            self._showFigure()

        self._start(self.ui.evaluateButton, lambda: self.logic.evaluate(
            p.resultPose, p.truePose or (p.xrayVolume.GetNodeReference("XrayToDRR.pose") if p.xrayVolume else None),
            p.ctVolume, wait=False), done)

    def _openFile(self, path) -> None:
        self._log(f"wrote {path}")
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(path)))

    def onView3d(self, checked=False) -> None:
        p = self._parameterNode
        self._start(self.ui.view3dButton, lambda: self.logic.view3d(p.resultPose, p.ctVolume, wait=False),
                    lambda png: self._openFile(Path(png).with_suffix(".html")))

    def onAnimate(self, checked=False) -> None:
        p = self._parameterNode
        self._start(self.ui.animateButton, lambda: self.logic.animate(p.resultPose, p.ctVolume, wait=False),
                    self._openFile)

    def _showMetrics(self, table) -> None:
        if table is None:
            return
        rows = [f"{table.GetCellText(r, 0)}: {table.GetCellText(r, 1)}" for r in range(table.GetNumberOfRows())]
        self.ui.metricsLabel.text = "\n".join(rows[:12])

    def _showFigure(self) -> None:
        figure = self.logic.registrationFigure(_path(self._parameterNode.registrationFolder))
        if figure is None:
            self.ui.figureLabel.text = ""
            return
        pixmap = qt.QPixmap(str(figure))
        if not pixmap.isNull():
            self.ui.figureLabel.setPixmap(pixmap.scaledToWidth(max(self.ui.figureLabel.width, 200),
                                                               qt.Qt.SmoothTransformation))
            self.ui.figureLabel.toolTip = str(figure)

    def onOpenFigure(self, checked=False) -> None:
        figure = self.logic.registrationFigure(_path(self._parameterNode.registrationFolder))
        if figure is None:
            slicer.util.infoDisplay("No figure in the registration folder.", windowTitle="XrayToDRR")
            return
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(figure)))

    # --- result display --------------------------------------------------------------------------------------------
    def onResultPoseChanged(self, node) -> None:
        self._closeReview()
        self._result = None
        self.updateComparison(True)

    def updateComparison(self, recompute: bool = False) -> None:
        """Overlay, difference or checkerboard of the DRR and the X-ray in the Red view: the result's DRR, or the
        live preview while reviewing."""
        p = self._parameterNode
        if p is None or p.resultPose is None:
            return
        if self.logic.isMultiView(p.resultPose):  # every view in its own slice view
            with slicer.util.tryWithErrorDisplay("Cannot show the views.", waitCursor=False):
                self.logic.showViews(p.resultPose, p.viewMode, p.opacity, p.checkerTiles, self._review)
            return
        xray = p.resultPose.GetNodeReference("XrayToDRR.xray") or p.xrayVolume
        with slicer.util.tryWithErrorDisplay("Cannot show the comparison.", waitCursor=False):
            if self._review is not None and self._review.node is not None and xray is not None:
                if p.viewMode != "overlay":
                    self._reviewComparison = self.logic.compare(xray, self._review.node, p.checkerTiles,
                                                                self._reviewComparison or (None, None))
                self.logic.showComparison(xray, self._review.node, p.viewMode, p.opacity, self._reviewComparison)
                return
            drr = p.resultPose.GetNodeReference("XrayToDRR.drr")
            if drr is None or xray is None:
                return
            comparison = self._result[2] if self._result and not recompute else None
            if p.viewMode != "overlay" and comparison is None:
                comparison = self.logic.compare(xray, drr, p.checkerTiles, self._comparisonNodes(drr))
            self._result = (xray, drr, comparison)
            self.logic.showComparison(xray, drr, p.viewMode, p.opacity, comparison)

    def _comparisonNodes(self, drr):
        """The difference and checkerboard nodes made earlier for this DRR (updated, not added again)."""
        if self._result and self._result[1] is drr and self._result[2]:
            return self._result[2]
        return (None, None)

    # --- live review -----------------------------------------------------------------------------------------------
    def onLivePreview(self, on) -> None:
        p = self._parameterNode
        if not on:
            self._closeReview()
            self.updateComparison()
            return
        if self._review is not None or p.resultPose is None:
            return
        if not self._ready():
            p.livePreview = False
            return
        with slicer.util.tryWithErrorDisplay("The live review could not start.", waitCursor=True):
            xray = p.resultPose.GetNodeReference("XrayToDRR.xray") or p.xrayVolume
            self._review = self.logic.startReview(p.resultPose, p.ctVolume, xray)
            self._observedPose = p.resultPose
            self.addObserver(p.resultPose, slicer.vtkMRMLTransformNode.TransformModifiedEvent, self.onPoseModified)
            self._syncValuesFromNode()
            self.updateComparison()
            self._scheduleReview()
        if self._review is None:
            p.livePreview = False

    def _closeReview(self) -> None:
        if hasattr(self, "_reviewTimer"):
            self._reviewTimer.stop()
        if self._observedPose is not None:
            self.removeObserver(self._observedPose, slicer.vtkMRMLTransformNode.TransformModifiedEvent,
                                self.onPoseModified)
            self._observedPose = None
        if self._review is not None:
            self._review.close()
            self._review = None
        for node in self._reviewComparison or ():
            if node is not None and slicer.mrmlScene.GetNodeByID(node.GetID()) is not None:
                slicer.mrmlScene.RemoveNode(node)
        self._reviewComparison = None

    def _values(self) -> list[float]:
        p = self._parameterNode
        return [getattr(p, name) for name in REVIEW_VALUES]

    def onReviewValueChanged(self, value=None) -> None:
        if not self._syncing and self._review is not None:
            self._renderNode = False
            self._scheduleReview()

    def _scheduleReview(self) -> None:
        if not self._reviewTimer.isActive():
            self._reviewTimer.start()

    def _renderReview(self) -> None:
        """Timer slot: one render with the latest values (moves made meanwhile are coalesced)."""
        if self._review is None:
            return
        self._applying = True
        try:
            ncc = self._review.render() if self._renderNode else self._review.update(self._values())
        except Exception as e:
            self._closeReview()
            self._parameterNode.livePreview = False
            slicer.util.errorDisplay(f"Live review stopped: {e}", windowTitle="XrayToDRR")
            return
        finally:
            self._applying = False
            self._renderNode = False
        if self._parameterNode.viewMode != "overlay":
            self.updateComparison()
        rate = 1.0 / self._review.seconds if self._review.seconds else 0.0
        views = getattr(self._review, "nccs", None)  # a multi-view review: each view's too
        each = f" (views {', '.join(f'{v:.3f}' for v in views)})" if views else ""
        self.ui.nccLabel.text = f"NCC {ncc:.4f}{each}   ({rate:.0f} renders/s)"

    def onPoseModified(self, caller=None, event=None) -> None:
        """The transform was edited directly (Transforms module, interaction handles): follow it."""
        if self._applying or self._review is None:
            return
        self._syncValuesFromNode()
        self._renderNode = True  # the sliders may be clipped to their ranges: render the node as it is
        self._scheduleReview()

    def _syncValuesFromNode(self) -> None:
        values = self._review.valuesFromNode()
        self._syncing = True
        try:
            for name, value in zip(REVIEW_VALUES, values):
                limit = 45.0 if name.startswith("reviewR") else 150.0  # the sliders' ranges
                setattr(self._parameterNode, name, float(np.clip(value, -limit, limit)))
        finally:
            self._syncing = False

    def onReset(self, checked=False) -> None:
        p = self._parameterNode
        if p.resultPose is None:
            return
        self._syncing = True
        try:
            for name in REVIEW_VALUES:
                setattr(p, name, 0.0)
        finally:
            self._syncing = False
        with slicer.util.tryWithErrorDisplay("Reset failed.", waitCursor=True):
            if self._review is not None:
                self._applying = True
                try:
                    self._review.reset()
                finally:
                    self._applying = False
            else:
                self.logic.resetPose(p.resultPose)
            self.logic.showCArm(p.resultPose)

    def onDecision(self, decision: str) -> None:
        p = self._parameterNode
        if p.resultPose is None:
            slicer.util.infoDisplay(NEEDS_RESULT, windowTitle="XrayToDRR")
            return
        with slicer.util.tryWithErrorDisplay("The decision could not be recorded.", waitCursor=True):
            path = self.logic.recordDecision(p.resultPose, decision, self._review, _path(p.registrationFolder))
            self.logic.showCArm(p.resultPose)
            self._log(f"{decision}: wrote {path}")
            self.ui.decisionLabel.text = f"{'Accepted' if decision == 'accept' else 'Rejected'}: {path.parent.name}"


#
# XrayToDRRRegistrationLogic
#


class XrayToDRRRegistrationLogic(ScriptedLoadableModuleLogic):
    """The module's console API: `register`, `train`, `finetune` run the CLI verbs (defaults: the verbs') in a
    child process: wait=True (default) blocks and returns nodes (or the checkpoint path); wait=False returns an
    XrayToDRRTask. `startReview`, `recordDecision`/`accept`/`reject`, `compare` and `landmarksFile` work in this
    process.

    Settings shared with the XrayToDRR module's Logic (`self.base`): device (auto | cpu | cuda), python (the
    interpreter of the jobs), workFolder (where jobs write; default: Slicer's temporary folder)."""

    PREVIEW_SIZE = 128   # live review: pixels along the detector's longer side
    DRR_SIZE = 512       # result DRR: at most this many pixels along the longer side (same field of view)
    # the register verb's defaults (XrayToDRRRegistrationLib.batch.RegistrationOptions)
    MULTIVIEW_MODES = ("rigid-rig", "independent")  # register --multiview (XrayToDRRRegistrationLib.multiview.MODES)
    REGISTER_DEFAULTS = {"crop": 0, "collimator": "auto", "similarity": "gmncc", "scales": "auto", "lr_rot": 1e-2,
                         "lr_xyz": 1.0, "patience": 8, "max_n_itrs": 200, "renderer": "auto"}

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.base = XrayToDRRLogic()
        self._renderers = {}  # CT node ID -> (its modification stamp, FastRenderer)

    def getParameterNode(self):
        return XrayToDRRRegistrationParameterNode(super().getParameterNode())

    @property
    def scene(self):
        return slicer.mrmlScene

    @property
    def dependencies(self):
        return self.base.dependencies

    @property
    def device(self) -> str:
        return self.base.device

    @device.setter
    def device(self, value: str) -> None:
        self.base.device = value
        self._renderers.clear()

    @property
    def workFolder(self):
        return self.base.workFolder

    @workFolder.setter
    def workFolder(self, value) -> None:
        self.base.workFolder = value

    @property
    def python(self) -> str:
        return self.base.python

    @python.setter
    def python(self, value: str) -> None:
        self.base.python = value

    # --- helpers ---------------------------------------------------------------------------------------------------
    def newFolder(self, step: str) -> Path:
        return self.base._newFolder(step)

    @staticmethod
    def _require(value, what: str):
        from XrayToDRRLib.errors import InputError

        if value is None or (isinstance(value, (str, Path)) and str(value).strip() in ("", ".")):
            raise InputError(f"no {what} given", None, f"choose the {what}")
        return value

    @staticmethod
    def parseRanges(text: str) -> Optional[dict]:
        """'r1 -20 20; tx -30 30' -> {'r1': (-20.0, 20.0), 'tx': (-30.0, 30.0)} (the train verb's pose ranges)."""
        from XrayToDRRLib.errors import InputError

        ranges = {}
        for item in (text or "").replace(",", " ").split(";"):
            words = item.split()
            if not words:
                continue
            if len(words) != 3 or words[0] not in RANGE_NAMES:
                raise InputError(f"cannot read pose range '{item.strip()}'", None,
                                 "write NAME MIN MAX separated by ';', NAME one of r1 r2 r3 tx ty tz")
            try:
                ranges[words[0]] = (float(words[1]), float(words[2]))
            except ValueError:
                raise InputError(f"pose range '{item.strip()}' has a non-number", None, "e.g. r1 -30 30") from None
        return ranges or None

    @staticmethod
    def _extra(extraArgs) -> list[str]:
        if not extraArgs:
            return []
        return shlex.split(extraArgs) if isinstance(extraArgs, str) else [str(a) for a in extraArgs]

    def _volumeArgument(self, volume, folder: Path, name: str) -> str:
        """A CT node written into the job folder, or a path (file or folder of CTs): as an absolute path, since
        the verbs record it (parameters.pt, config.json) for later steps run elsewhere (pairs, evaluate)."""
        if isinstance(volume, (str, Path)):
            return str(_abs(volume))
        self.base._writeVolume(self._require(volume, "CT"), folder / name)
        return str((folder / name).resolve())

    def _registerOptions(self, **options) -> list:
        """`--name value` for each option of `register` that differs from the verb's default (RegistrationOptions),
        so a run with the defaults gives exactly the verb's own command line."""
        args = []
        for key, value in options.items():
            if value is not None and value != self.REGISTER_DEFAULTS.get(key):
                args += [f"--{key.replace('_', '-')}", value]
        return args

    def _initArguments(self, folder: Path, xrayNode, model, initPose, initView, initDicom, landmarks) -> list:
        """The register verb's one initialisation option (files it needs written into the job folder)."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.errors import InputError

        given = [k for k, v in (("model", model), ("initPose", initPose), ("initView", initView),
                                ("initDicom", initDicom or None), ("landmarks", landmarks)) if v is not None]
        if len(given) != 1:
            raise InputError(f"give exactly one initialisation (got {', '.join(given) or 'none'})", None,
                             "choose a pose model, a pose, a view, the DICOM angles or landmarks")
        if model is not None:
            return ["--model", _abs(model)]
        if initPose is not None:
            if isinstance(initPose, (str, Path)):
                return ["--init-pose", _abs(initPose)]
            mrml.pose_from_transform_node(initPose).save(folder / "init_pose.json")
            return ["--init-pose", "init_pose.json"]
        if initView is not None:
            return ["--init-view", initView]
        if initDicom:
            return ["--init-dicom"]
        if isinstance(landmarks, (str, Path)):
            return ["--init-landmarks", _abs(landmarks)]
        self.landmarksFile(xrayNode, landmarks[0], landmarks[1], folder / "landmarks.json")
        return ["--init-landmarks", "landmarks.json"]

    def _optionArguments(self, folder: Path, volumeNode, segmentationNode, labels, crop, subtractBackground,
                         linearize, collimator, similarity, scales, lrRot, lrXyz, patience, maxIterations,
                         renderer, saveImages, translate) -> list:
        """The register verb's mask and options, each only where it differs from the verb's default."""
        args = []
        if segmentationNode is not None:
            self.base._writeVolume(segmentationNode, folder / "mask.nrrd", labels=True, reference=volumeNode)
            args += ["--mask", (folder / "mask.nrrd").resolve()]
            chosen = self.base._labels(labels)
            if chosen:
                args += ["--labels", ",".join(str(v) for v in chosen)]
        args += self._registerOptions(crop=int(crop), collimator=collimator, similarity=similarity, scales=scales,
                                      lr_rot=lrRot, lr_xyz=lrXyz, patience=int(patience),
                                      max_n_itrs=int(maxIterations), renderer=renderer)
        for flag, on in (("--subtract-background", subtractBackground), ("--linearize", linearize),
                         ("--save-images", saveImages)):
            if on:
                args.append(flag)
        if translate is not None:
            translate = _abs(translate)
            args += ["--translate", translate / "latest.pth.tar" if translate.is_dir() else translate]
        return args

    def modelDetectorFromXray(self, xrayNode, height: int = 128) -> tuple[float, float]:
        """(sdd, delx) of a square `height`-pixel training detector covering the X-ray's larger side."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.xray import require_geometry

        xray = require_geometry(mrml.xray_from_volume_node(self._require(xrayNode, "X-ray")))
        extent = max(xray.pixels.shape[1] * xray.delx, xray.pixels.shape[0] * (xray.dely or xray.delx))
        return float(xray.sdd), float(extent / int(height))

    def renderer(self, volumeNode):
        """The CT's FastRenderer, prepared once per CT (and again when its voxels or transform change)."""
        import vtk
        from XrayToDRRLib import mrml
        from XrayToDRRLib.fast_render import FastRenderer

        self._require(volumeNode, "CT")
        ijk = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijk)
        parent = volumeNode.GetParentTransformNode()
        toWorld = vtk.vtkMatrix4x4()
        if parent is not None:
            parent.GetMatrixTransformToWorld(toWorld)
        stamp = (volumeNode.GetImageData().GetMTime() if volumeNode.GetImageData() else 0,
                 tuple(slicer.util.arrayFromVTKMatrix(ijk).ravel()),
                 tuple(slicer.util.arrayFromVTKMatrix(toWorld).ravel()))
        cached = self._renderers.get(volumeNode.GetID())
        if cached is None or cached[0] != stamp:
            cached = (stamp, FastRenderer(mrml.volume_node_to_sitk(volumeNode), device=self.device))
            self._renderers[volumeNode.GetID()] = cached
        return cached[1]

    @staticmethod
    def volumeCenter(volumeNode) -> np.ndarray:
        """The CT's voxel-grid centre in RAS mm (as shown): what the review rotates about."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.volumes import center_ras

        return np.asarray(center_ras(mrml.volume_node_to_sitk(volumeNode)), dtype=np.float64)

    def _xrayFile(self, xrayNode, folder: Path, keepDicom: bool = False, name: str = "xray.dcm") -> str:
        """The X-ray the verb reads: its source DICOM when it still exists and agrees with the node (keeps every
        tag: C-arm angles for --init-dicom), else a DICOM written from the node's pixels and geometry (`name`)."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.dicom import write_xray_dicom
        from XrayToDRRLib.xray import require_geometry

        xray = require_geometry(mrml.xray_from_volume_node(self._require(xrayNode, "X-ray")))
        source = Path(xray.path) if xray.path else None
        if keepDicom and source is not None and source.suffix.lower() in (".dcm", ".dicom", ".ima") \
                and source.is_file():
            from XrayToDRRLib.xray import read_xray

            original = read_xray(source)
            if original.sdd == xray.sdd and original.pixels.shape == xray.pixels.shape:
                return str(source)
        return str(write_xray_dicom(xray.pixels, folder / name, xray.sdd, xray.delx, xray.dely))

    def landmarksFile(self, xrayNode, xrayMarkups, ctMarkups, path) -> Path:
        """Write the --init-landmarks JSON from two markups point lists (n-th X-ray point <-> n-th CT point)."""
        from XrayToDRRRegistrationLib.mrml import write_landmarks

        return write_landmarks(path, xrayNode, xrayMarkups, ctMarkups)

    # --- verbs -----------------------------------------------------------------------------------------------------
    def train(self, volume, outputFolder=None, sdd: Optional[float] = None, height: Optional[int] = None,
              delx: Optional[float] = None, orientation: Optional[str] = None, renderer: Optional[str] = None,
              nEpochs: Optional[int] = None, nBatchesPerEpoch: Optional[int] = None,
              batchSize: Optional[int] = None, lr: Optional[float] = None, ranges: Optional[dict] = None,
              seed: Optional[int] = None, resume=None, extraArgs=None, wait: bool = True):
        """Train a pose regressor (`xraytodrr train`) on DRRs of a CT node (or a CT file / folder of CTs):
        `sdd`, `height`, `delx` define its square detector; None leaves the verb's default; `ranges` = {'r1':
        (min, max), ...}. resume: a run folder or checkpoint to continue (nothing else then). Returns last.pth."""
        self.base._requireEngine()
        folder = self.newFolder("pose-model")
        if resume is not None:
            resume = _abs(resume)
            resume = resume / "last.pth" if resume.is_dir() else resume
            out = _abs(outputFolder) if outputFolder else resume.parent
            args = ["train", "-o", out, "--resume", resume]
        else:
            out = _abs(outputFolder) if outputFolder else folder / "run"
            args = ["train", "-o", out, "-i", self._volumeArgument(volume, folder, "ct.nrrd")]
            options = {"sdd": sdd, "height": height, "delx": delx, "orientation": orientation, "renderer": renderer,
                       "n-epochs": nEpochs, "n-batches-per-epoch": nBatchesPerEpoch, "batch-size": batchSize,
                       "lr": lr, "seed": seed}
            for key, value in options.items():
                if value is not None:
                    args += [f"--{key}", value]
            for key, (lo, hi) in (ranges or {}).items():
                args += [f"--{key}", lo, hi]
        args += ["--device", self.device] + self._extra(extraArgs)
        title = "Resuming the pose model" if resume is not None else "Training the pose model"
        return self.base._run(title, args, folder, [out], lambda outputs: out / "last.pth", wait)

    def finetune(self, volume, checkpoint, outputFolder=None, lr: Optional[float] = None,
                 batchSize: Optional[int] = None, nEpochs: Optional[int] = None,
                 nBatchesPerEpoch: Optional[int] = None, rescale: float = 1.0, seed: Optional[int] = None,
                 wait: bool = True):
        """Finetune a pose regressor on one patient's CT (`xraytodrr finetune`). Returns the new run's last.pth."""
        self.base._requireEngine()
        folder = self.newFolder("finetune")
        out = _abs(outputFolder) if outputFolder else folder / "run"
        args = ["finetune", "-i", self._volumeArgument(volume, folder, "ct.nrrd"), "-c",
                _abs(self._require(checkpoint, "pose-model checkpoint")), "-o", out, "--rescale", rescale,
                "--device", self.device]
        for key, value in (("lr", lr), ("batch-size", batchSize), ("n-epochs", nEpochs),
                           ("n-batches-per-epoch", nBatchesPerEpoch), ("seed", seed)):
            if value is not None:
                args += [f"--{key}", value]
        return self.base._run("Finetuning the pose model", args, folder, [out], lambda outputs: out / "last.pth",
                              wait)

    def register(self, xrayNode, volumeNode, model=None, initPose=None, initView: Optional[str] = None,
                 initDicom: bool = False, landmarks=None, segmentationNode=None, labels=None, outputFolder=None,
                 crop: int = 0, subtractBackground: bool = False, linearize: bool = False,
                 collimator: str = "auto", similarity: str = "gmncc", scales: str = "auto", lrRot: float = 1e-2,
                 lrXyz: float = 1.0, patience: int = 8, maxIterations: int = 200, renderer: str = "auto",
                 saveImages: bool = False, devices: Optional[str] = None, extraArgs=None, name: Optional[str] = None,
                 opacity: float = 0.5, wait: bool = True, onDone=None, translate=None):
        """Register the X-ray node (or an X-ray file, or a folder of them) to the CT node (`xraytodrr register`),
        initialised by exactly one of: `model`
        (pose-model checkpoint), `initPose` (a pose transform node, e.g. the current one, or a pose file),
        `initView` ('ap' | 'pa' | 'lateral' | 'right-lateral' | 'auto': the global pose search about that view),
        `initDicom` (the search about the X-ray's C-arm angles), `landmarks` (a pair of
        markups point lists (on the X-ray, on the CT), or a JSON file). `segmentationNode`/`labels` restrict the
        DRR to those labels. `devices`: the job's --device (default: the module's device); a folder runs one
        worker process per listed device ('cuda:0,cuda:1', 'cpu,cpu'), 'auto' uses every GPU. `extraArgs`: further
        options of the verb (a string or a list). `translate`: a pix2pix checkpoint (or its run folder) that
        translates the X-ray before the similarity (--translate; None: none, as the CLI's default).

        Returns (pose transform node, DRR node on the detector plane over the X-ray, metrics table node); the pose
        node references them ('XrayToDRR.drr', 'XrayToDRR.xray', 'XrayToDRR.metrics') and keeps the output folder
        as attribute XrayToDRR.registrationFolder. For a folder of X-rays (one job, one result folder each and
        summary.csv): [(X-ray node, pose node, DRR node, metrics table node), ...] of those registered.
        `onDone(result folder)`: what a single X-ray's finished job returns instead (findPose uses it)."""
        from XrayToDRRLib.errors import InputError

        self.base._requireEngine()
        self._require(volumeNode, "CT")
        folder = self.newFolder("register")
        isFile = isinstance(xrayNode, (str, Path))
        # default result folder: named after the X-ray (pairs built from it are named after the folder)
        stem = Path(str(xrayNode)).name.split(".")[0] if isFile else xrayNode.GetName()
        out = _abs(outputFolder) if outputFolder else folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "xray")
        xray = str(_abs(xrayNode)) if isFile else self._xrayFile(xrayNode, folder, keepDicom=initDicom)
        if isFile and landmarks is not None and not isinstance(landmarks, (str, Path)):
            raise InputError("landmark point lists need the X-ray node they were placed on", str(xrayNode),
                             "give the X-ray node, or a landmarks JSON file")
        args = ["register", xray, "--volume", self._volumeArgument(volumeNode, folder, "ct.nrrd"), "-o", out]
        args += self._initArguments(folder, xrayNode, model, initPose, initView, initDicom, landmarks)
        args += self._optionArguments(folder, volumeNode, segmentationNode, labels, crop, subtractBackground,
                                      linearize, collimator, similarity, scales, lrRot, lrXyz, patience,
                                      maxIterations, renderer, saveImages, translate)
        args += ["--device", devices or self.device] + self._extra(extraArgs)
        if isFile and Path(xray).is_dir():
            return self.base._run("Registering X-rays", args, folder, [out],
                                  lambda outputs: self.loadRegistrations(out, volumeNode, opacity), wait)
        if isFile:
            xrayNode = self.base.importXray(xray)
        name = name or f"{xrayNode.GetName()} registration"

        def finish(outputs):
            if onDone is not None:
                return onDone(out)
            return self.loadRegistration(out, xrayNode, volumeNode, name, opacity)

        return self.base._run("Registering", args, folder, [out], finish, wait)

    def findPose(self, xrayNode, volumeNode, view: str = "auto", topK: int = 4, outputFolder=None,
                 devices: Optional[str] = None, extraArgs=None, wait: bool = True):
        """The global pose search alone, from only an X-ray and a CT (`xraytodrr register --init-view VIEW
        --init-only --search-top-k K`; view 'auto' searches AP, PA and both laterals): its candidates best first,
        each briefly refined. Returns (candidate transform nodes, candidates table node); give the one to keep to
        `register(initPose=node)`. Same defaults as the CLI."""
        stem = xrayNode.GetName() if not isinstance(xrayNode, (str, Path)) else Path(str(xrayNode)).name.split(".")[0]
        extra = ["--init-only", "--search-top-k", str(int(topK))] + self._extra(extraArgs)
        return self.register(xrayNode, volumeNode, initView=view, outputFolder=outputFolder, renderer="fast",
                             devices=devices, extraArgs=extra, wait=wait,
                             onDone=lambda out: self.loadCandidates(out, stem))

    def loadCandidates(self, folder, name: str = "X-ray"):
        """The candidates.json of a search (or registration) folder as (transform nodes best first, table node);
        each node keeps the folder as attribute XrayToDRR.registrationFolder."""
        from XrayToDRRRegistrationLib import mrml as review

        nodes, table = review.candidates_to_nodes(review.read_candidates(folder), self.scene, name)
        for node in nodes:
            node.SetAttribute(FOLDER, str(_abs(folder)))
        return nodes, table

    # --- several views of one patient -----------------------------------------------------------------------------
    def registerViews(self, xrayNodes, volumeNode, mode: str = "rigid-rig", rig=None, model=None, initPose=None,
                      initView: Optional[str] = None, initDicom: bool = False, landmarks=None,
                      segmentationNode=None, labels=None, outputFolder=None, crop: int = 0,
                      subtractBackground: bool = False, linearize: bool = False, collimator: str = "auto",
                      similarity: str = "gmncc", scales: str = "auto", lrRot: float = 1e-2, lrXyz: float = 1.0,
                      patience: int = 8, maxIterations: int = 200, renderer: str = "auto", saveImages: bool = False,
                      devices: Optional[str] = None, extraArgs=None, name: Optional[str] = None,
                      opacity: float = 0.5, wait: bool = True, onDone=None, translate=None):
        """Register two or more X-ray nodes (or files), views of one patient, jointly (`xraytodrr register X1 X2
        ... --multiview MODE [--rig rig.json]`): 'rigid-rig' (the CLI's: one patient pose, the views' relative
        C-arm geometry from `rig` or, without it, the X-rays' DICOM angles) or 'independent' (a pose per view and
        their consistency). One initialisation as for `register` (for view 1; `landmarks` are placed on the first
        X-ray); the other options as `register`'s, with its defaults. Each X-ray goes to the verb as its source
        DICOM when that still agrees with the node (its C-arm angles, its file name for rig.json's "file"), else
        as a DICOM written from the node, named after it. Bad input raises before anything is written.

        Returns loadMultiView's (patient pose node, the views' pose nodes, their DRR nodes, metrics table node);
        `onDone(result folder)`: what the finished job returns instead."""
        from XrayToDRRLib.errors import InputError, require_file

        self.base._requireEngine()
        self._require(volumeNode, "CT")
        xrayNodes = list(xrayNodes or [])
        if len(xrayNodes) < 2 or any(x is None for x in xrayNodes):
            raise InputError(f"a multi-view registration needs at least two X-rays, got "
                             f"{sum(x is not None for x in xrayNodes)}", None,
                             "select every view's X-ray (two or more), or use Register for one X-ray")
        keys = [str(_abs(x)) if isinstance(x, (str, Path)) else x.GetID() for x in xrayNodes]
        if len(set(keys)) != len(keys):
            raise InputError("the same X-ray is selected twice", None, "select each view once")
        if mode not in self.MULTIVIEW_MODES:
            raise InputError(f"unknown multi-view mode '{mode}'", None, f"use {' or '.join(self.MULTIVIEW_MODES)}")
        rigPath = require_file(_abs(rig), "rig file") if _path(rig) is not None else None
        nodes = [self.base.importXray(_abs(x)) if isinstance(x, (str, Path)) else x for x in xrayNodes]
        folder = self.newFolder("register-views")
        out = _abs(outputFolder) if outputFolder else folder / "multiview"
        files, used = [], set()
        for node in nodes:
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", node.GetName()) or "xray"
            fileName, n = f"{stem}.dcm", 2
            while fileName in used:  # two nodes of one name: the verb needs distinct files
                fileName, n = f"{stem}-{n}.dcm", n + 1
            used.add(fileName)
            files.append(self._xrayFile(node, folder, keepDicom=True, name=fileName))
        args = ["register", *files, "--volume", self._volumeArgument(volumeNode, folder, "ct.nrrd"), "-o", out,
                "--multiview", mode]
        if rigPath is not None:
            args += ["--rig", rigPath]
        args += self._initArguments(folder, nodes[0], model, initPose, initView, initDicom, landmarks)
        args += self._optionArguments(folder, volumeNode, segmentationNode, labels, crop, subtractBackground,
                                      linearize, collimator, similarity, scales, lrRot, lrXyz, patience,
                                      maxIterations, renderer, saveImages, translate)
        args += ["--device", devices or self.device] + self._extra(extraArgs)

        def finish(outputs):
            if onDone is not None:
                return onDone(out)
            return self.loadMultiView(out, nodes, volumeNode, name, opacity)

        return self.base._run("Registering views", args, folder, [out], finish, wait)

    def loadMultiView(self, folder, xrayNodes=None, volumeNode=None, name: Optional[str] = None,
                      opacity: float = 0.5):
        """A multi-view result folder (metrics.json, view-1/, view-2/, ...) as nodes: (patient pose node, the
        views' pose nodes, their DRR nodes, metrics table node). The patient pose is a transform holding view 1's
        world_from_camera; each view's pose is a child transform holding its camera relative to view 1's (the rig;
        XrayToDRRRegistrationLib.mrml.multiview_pose_nodes), so moving the patient pose moves every view. Each view
        is loaded as `loadRegistration` loads one (its X-ray node, `xrayNodes[k]`, placed on its detector, else its
        gt.png; its DRR; its metrics; its C-arm) and shown in its own slice view of a side-by-side layout. The
        combined metrics (mode, similarity, the weakest view's confidence, consistency, warning) are the table;
        one row per view is the patient pose's 'XrayToDRR.viewMetrics' table."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.pose import load_pose
        from XrayToDRRRegistrationLib import mrml as review

        folder = _abs(folder)
        folders = review.multiview_folders(folder)
        poses = [load_pose(f / "pose.json") for f in folders]
        xrayNodes = list(xrayNodes or [])
        xrayNodes += [None] * (len(folders) - len(xrayNodes))
        name = name or f"{folder.name} registration"
        metrics = json.loads((folder / "metrics.json").read_text())
        parent, children = review.multiview_pose_nodes(poses, self.scene, name)
        parent.SetAttribute(FOLDER, str(folder))
        parent.SetAttribute(REGISTERED_POSE, json.dumps(poses[0].to_dict()))
        parent.SetAttribute(review.MULTIVIEW, str(metrics["multiview"].get("mode", "")))
        views = review.show_multiview_layout(self.scene, len(folders))
        drrs = []
        for k, (child, pose, viewFolder) in enumerate(zip(children, poses, folders)):
            drr, _ = self._resultNodes(viewFolder, pose, child, xrayNodes[k], volumeNode, f"{name} view {k + 1}",
                                       opacity, views[k])
            self.base.showCArm(child)
            drrs.append(drr)
        table = self.metricsTable(folder, f"{name} metrics")
        rows = review.view_metrics_rows(metrics)
        perView = mrml.metrics_to_table_node(rows, self.scene, f"{name} views")
        for role, node in (("XrayToDRR.metrics", table), ("XrayToDRR.viewMetrics", perView),
                           ("XrayToDRR.xray", children[0].GetNodeReference("XrayToDRR.xray")),
                           ("XrayToDRR.drr", drrs[0])):
            if node is not None:
                parent.SetNodeReferenceID(role, node.GetID())
        return parent, children, drrs, table

    @staticmethod
    def isMultiView(poseNode) -> bool:
        """Is this the patient pose of a multi-view result (loadMultiView)?"""
        from XrayToDRRRegistrationLib import mrml as review

        return poseNode is not None and bool(review.view_pose_nodes(poseNode))

    def showViews(self, poseNode, mode: str = "overlay", opacity: float = 0.5, tiles: int = 8, review=None):
        """Each view of a multi-view result in its own slice view: the DRR (or the live review's preview) over
        the X-ray, or their difference / checkerboard. Returns the slice composite nodes."""
        from XrayToDRRRegistrationLib import mrml as glue

        children = glue.view_pose_nodes(poseNode)
        previews = [v.node for v in review.views] if isinstance(review, XrayToDRRMultiViewReview) else \
            [c.GetNodeReference("XrayToDRR.drr") for c in children]
        glue.show_multiview_layout(self.scene, len(children))
        return glue.show_views(self.scene, [(c.GetNodeReference("XrayToDRR.xray"), d)
                                            for c, d in zip(children, previews)], mode, opacity, tiles)

    def showCArm(self, poseNode) -> list:
        """The C-arm markups of a pose: of every view for a multi-view patient pose. Returns [(source, detector)]."""
        from XrayToDRRRegistrationLib import mrml as review

        return [self.base.showCArm(node) for node in review.view_pose_nodes(poseNode) or [poseNode]]

    def registerFiles(self, paths, volumeNode, outputFolder, **options) -> list:
        """Register a folder of X-rays (one job: `xraytodrr register FOLDER`) or a list of X-ray files (one job
        each), one result folder per X-ray under `outputFolder`. Returns [(X-ray node, pose node, DRR node, metrics
        table node), ...] for those registered (the folder's summary.csv lists the others with their error)."""
        if isinstance(paths, (str, Path)) and Path(paths).is_dir():
            return self.register(str(paths), volumeNode, outputFolder=outputFolder, **options)
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        results = []
        for path in [Path(p) for p in paths]:
            xray = self.base.importXray(path)
            results.append((xray, *self.register(xray, volumeNode, outputFolder=Path(outputFolder) / xray.GetName(),
                                                 **options)))
        return results

    def loadRegistrations(self, folder, volumeNode=None, opacity: float = 0.5) -> list:
        """The result folders listed as registered in FOLDER/summary.csv: [(X-ray node, pose node, DRR node,
        metrics table node), ...] (the X-ray imported from its file when it can be, else its gt.png)."""
        import csv

        folder = Path(folder)
        with open(folder / "summary.csv", newline="") as f:
            rows = [row for row in csv.DictReader(f) if row.get("status") == "ok"]
        results = []
        for row in rows:
            result = Path(row.get("folder") or "")
            result = result if result.is_absolute() else folder / result
            try:
                xray = self.base.importXray(row["xray"])
            except Exception:
                xray = None  # loadRegistration shows gt.png instead
            pose, drr, table = self.loadRegistration(result, xray, volumeNode, f"{result.name} registration",
                                                     opacity)
            results.append((xray or pose.GetNodeReference("XrayToDRR.xray"), pose, drr, table))
        return results

    def evaluate(self, registration, truePose=None, volumeNode=None, wait: bool = True):
        """Image metrics (and pose errors against `truePose`, a transform node or pose file) of a registration
        (`xraytodrr evaluate`): `registration` is its pose node or output folder. Writes evaluation.png there and
        adds to metrics.json. `volumeNode`: the CT for mTRE (default: the one registered). Returns the refreshed
        metrics table node (referenced by the pose node)."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.errors import InputError

        self.base._requireEngine()
        poseNode = registration if not isinstance(registration, (str, Path)) else None
        if poseNode is not None and not poseNode.GetAttribute(FOLDER):
            raise InputError("the pose has no registration output folder", poseNode.GetName(),
                             "register first, or load a registration folder with loadRegistration")
        folder = Path(poseNode.GetAttribute(FOLDER)) if poseNode is not None else _abs(registration)
        work = self.newFolder("evaluate")
        args = ["evaluate", "--data-dir", folder]
        if isinstance(truePose, (str, Path)):
            args += ["--gt-pose", _abs(truePose)]
        elif truePose is not None:
            mrml.pose_from_transform_node(truePose).save(work / "true_pose.json")
            args += ["--gt-pose", "true_pose.json"]
        if volumeNode is not None:
            args += ["--volume", self._volumeArgument(volumeNode, work, "ct.nrrd")]

        def finish(outputs):
            table = self.metricsTable(folder, f"{poseNode.GetName() if poseNode else folder.name} metrics")
            if poseNode is not None:
                old = poseNode.GetNodeReference("XrayToDRR.metrics")
                poseNode.SetNodeReferenceID("XrayToDRR.metrics", table.GetID())
                if old is not None:
                    self.scene.RemoveNode(old)
            return table

        return self.base._run("Evaluating", args, work, [folder / "evaluation.png"], finish, wait)

    def _registrationFolder(self, registration) -> Path:
        from XrayToDRRLib.errors import InputError

        if isinstance(registration, (str, Path)):
            return _abs(registration)
        if registration is None or not registration.GetAttribute(FOLDER):
            raise InputError("the pose has no registration output folder",
                             registration.GetName() if registration else None,
                             "register first, or load a registration folder with loadRegistration")
        return Path(registration.GetAttribute(FOLDER))

    def view3d(self, registration, volumeNode, outputFolder=None, wait: bool = True):
        """The C-arm scene as a picture (`xraytodrr view3d`: bone surface, source, detector with the DRR, ray
        cone): view3d.png and view3d.html in `outputFolder` (default: the registration folder). Returns the PNG."""
        folder = self._registrationFolder(registration)
        work = self.newFolder("view3d")
        out = _abs(outputFolder) if outputFolder else folder
        args = ["view3d", "--volume", self._volumeArgument(volumeNode, work, "ct.nrrd"), "--pose",
                folder / "pose.json", "-o", out, "--device", self.device]
        return self.base._run("Drawing the 3D scene", args, work, [out / "view3d.png", out / "view3d.html"],
                              lambda outputs: out / "view3d.png", wait)

    def animate(self, registration, volumeNode, output=None, frames: int = 40, wait: bool = True):
        """A GIF of the registration's iterations over the X-ray (`xraytodrr animate`), default
        registration.gif in the registration folder. Returns its path."""
        folder = self._registrationFolder(registration)
        work = self.newFolder("animate")
        out = _abs(output) if output else folder / "registration.gif"
        args = ["animate", "--volume", self._volumeArgument(volumeNode, work, "ct.nrrd"), "--parameters",
                folder / "parameters.pt", "-o", out, "--frames", int(frames), "--device", self.device]
        return self.base._run("Animating", args, work, [out], lambda outputs: out, wait)

    def metricsTable(self, folder, name: str):
        """metrics.json of a registration folder as a table node (nested entries as dotted names)."""
        from XrayToDRRLib import mrml

        def flatten(data, prefix=""):
            for key, value in data.items():
                if isinstance(value, dict):
                    yield from flatten(value, f"{prefix}{key}.")
                elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
                    yield f"{prefix}{key}", value
                else:
                    yield f"{prefix}{key}", json.dumps(value)

        path = Path(folder) / "metrics.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        metrics = dict(flatten(data)) if isinstance(data, dict) else {}
        return mrml.metrics_to_table_node(metrics or {"ncc": ""}, self.scene, name)

    # --- results ---------------------------------------------------------------------------------------------------
    def loadRegistration(self, folder, xrayNode=None, volumeNode=None, name: Optional[str] = None,
                         opacity: float = 0.5):
        """A registration output folder (pose.json, metrics.json, gt.png, hq_drr.png) as nodes: (pose transform
        node, DRR node, metrics table node). The X-ray node is placed on the pose's detector plane when its size
        matches the pose's detector, else the preprocessed X-ray (gt.png) is loaded there; the DRR (the verb's
        hq_drr.png, else the CT's FastRenderer 'hq' at up to DRR_SIZE pixels) is shown over it; the C-arm's source
        and detector are drawn."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.pose import load_pose

        folder = _abs(folder)  # kept on the pose node for later jobs (evaluate, view3d), which run elsewhere
        pose = load_pose(folder / "pose.json")
        name = name or f"{folder.name} registration"
        poseNode = mrml.pose_to_transform_node(pose, self.scene, f"{name} pose")
        drr, table = self._resultNodes(folder, pose, poseNode, xrayNode, volumeNode, name, opacity)
        self.base.showCArm(poseNode)
        return poseNode, drr, table

    def _resultNodes(self, folder: Path, pose, poseNode, xrayNode, volumeNode, name: str, opacity: float,
                     view: str = "Red"):
        """A result folder's X-ray on the pose's detector, its DRR over it in `view` and its metrics table, all
        referenced by the pose node, which keeps the folder and the registered pose. Returns (DRR, table)."""
        import SimpleITK as sitk
        from XrayToDRRLib import mrml
        from XrayToDRRLib.xray import Xray
        from XrayToDRRRegistrationLib import mrml as review

        poseNode.SetAttribute(FOLDER, str(folder))
        poseNode.SetAttribute(REGISTERED_POSE, json.dumps(pose.to_dict()))
        dims = xrayNode.GetImageData().GetDimensions() if xrayNode is not None else None
        if dims is not None and (dims[0], dims[1]) == (pose.width, pose.height):
            mrml.set_detector_geometry(xrayNode, pose)
            shown = xrayNode
        else:
            pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "gt.png"))).astype(np.float32)
            shown = mrml.xray_to_volume_node(Xray(pixels, pose.sdd, pose.delx, pose.dely, folder / "gt.png"),
                                             self.scene, f"{name} X-ray", pose)
        drr = None
        hq = folder / "hq_drr.png"  # the verb's final DRR (its --renderer), at the pose's detector
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(hq))).astype(np.float32) if hq.is_file() else None
        if pixels is not None and pixels.shape == (pose.height, pose.width):
            drr = mrml.drr_to_volume_node(pixels / max(float(pixels.max()), 1.0), pose, self.scene, f"{name} DRR")
        elif volumeNode is not None:
            small = review.preview_pose(pose, self.DRR_SIZE)
            drr = mrml.drr_to_volume_node(self.renderer(volumeNode).render(small, "hq"), small, self.scene,
                                          f"{name} DRR")
        if drr is not None:
            mrml.show_overlay(self.scene, shown, drr, opacity, view)
        table = self.metricsTable(folder, f"{name} metrics")
        for role, node in (("XrayToDRR.drr", drr), ("XrayToDRR.xray", shown), ("XrayToDRR.metrics", table)):
            if node is not None:
                poseNode.SetNodeReferenceID(role, node.GetID())
        return drr, table

    @staticmethod
    def registrationFigure(folder) -> Optional[Path]:
        """The evaluation figure of a registration output folder (evaluation.png by `xraytodrr evaluate`, else a
        multi-view result's multiview.png, else registration.png by --save-images), else its final DRR
        (final_img.png); None when there is none."""
        if folder is None:
            return None
        for name in ("evaluation.png", "multiview.png", "registration.png", "final_img.png"):
            if (Path(folder) / name).is_file():
                return Path(folder) / name
        return None

    def compare(self, xrayNode, drrNode, tiles: int = 8, nodes=(None, None)):
        """(difference node, checkerboard node) of the windowed DRR and X-ray, on the DRR's detector plane."""
        from XrayToDRRRegistrationLib.mrml import comparison_nodes

        return comparison_nodes(self.scene, xrayNode, drrNode, tiles, nodes)

    def showComparison(self, xrayNode, drrNode, mode: str = "overlay", opacity: float = 0.5, comparison=None):
        """Red view: 'overlay' (the DRR over the X-ray at `opacity`), 'difference' or 'checkerboard'."""
        from XrayToDRRRegistrationLib.mrml import show_comparison

        if mode != "overlay" and comparison is None:
            comparison = self.compare(xrayNode, drrNode)
        return show_comparison(self.scene, xrayNode, drrNode, mode, opacity, comparison)

    # --- review ----------------------------------------------------------------------------------------------------
    def startReview(self, poseNode, volumeNode, xrayNode=None, size: Optional[int] = None) -> XrayToDRRPoseReview:
        """A live review of a registration pose: see XrayToDRRPoseReview (prepares the CT's renderer once; NCC
        inside the registration's exposed field, field.png, when it wrote one)."""
        import SimpleITK as sitk

        self._require(poseNode, "pose transform")
        if self.isMultiView(poseNode):
            return self.startMultiViewReview(poseNode, volumeNode, size)
        xrayNode = xrayNode or poseNode.GetNodeReference("XrayToDRR.xray")
        self._require(xrayNode, "X-ray")
        field = Path(poseNode.GetAttribute(FOLDER) or ".") / "field.png"
        field = sitk.GetArrayFromImage(sitk.ReadImage(str(field))) if field.is_file() else None
        return XrayToDRRPoseReview(self.scene, self.renderer(volumeNode), poseNode, xrayNode,
                                   self.volumeCenter(volumeNode), size or self.PREVIEW_SIZE, field=field)

    def startMultiViewReview(self, poseNode, volumeNode, size: Optional[int] = None) -> XrayToDRRMultiViewReview:
        """A live review of a multi-view result's patient pose: see XrayToDRRMultiViewReview (each view's NCC
        inside its registration's exposed field)."""
        import SimpleITK as sitk
        from XrayToDRRRegistrationLib import mrml as review

        views = review.view_pose_nodes(self._require(poseNode, "patient pose transform"))
        fields = []
        for node in views:
            field = Path(node.GetAttribute(FOLDER) or ".") / "field.png"
            fields.append(sitk.GetArrayFromImage(sitk.ReadImage(str(field))) if field.is_file() else None)
        return XrayToDRRMultiViewReview(self.scene, self.renderer(volumeNode), poseNode, views,
                                        self.volumeCenter(volumeNode), size or self.PREVIEW_SIZE, fields)

    def resetPose(self, poseNode) -> None:
        """Give the pose node back the registration result it was loaded with."""
        from XrayToDRRLib.pose import Pose
        from XrayToDRRRegistrationLib.mrml import set_pose_matrix

        registered = poseNode.GetAttribute(REGISTERED_POSE)
        if registered:
            set_pose_matrix(poseNode, Pose.from_dict(json.loads(registered)))

    def recordDecision(self, poseNode, decision: str, review: Optional[XrayToDRRPoseReview] = None,
                       folder=None) -> Path:
        """Accept or reject the pose the node holds now: writes review.json in the registration output folder
        (decision, reviewed pose, registered pose, review values, NCC) and keeps the decision on the module's
        parameter node (the Translation module's 'accepted registrations'). Returns the review.json path."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.errors import InputError
        from XrayToDRRLib.pose import Pose
        from XrayToDRRRegistrationLib.mrml import record_review, write_review

        self._require(poseNode, "pose transform")
        folder = folder or (Path(poseNode.GetAttribute(FOLDER)) if poseNode.GetAttribute(FOLDER) else None)
        if folder is None:
            raise InputError("the pose has no registration output folder", poseNode.GetName(),
                             "register first, or load a registration folder with loadRegistration")
        pose = mrml.pose_from_transform_node(poseNode)
        registered = poseNode.GetAttribute(REGISTERED_POSE)
        values = review.valuesFromNode() if review is not None else None
        path = write_review(folder, decision, pose, Pose.from_dict(json.loads(registered)) if registered else None,
                            values, review.ncc if review is not None else None)
        record_review(self.scene, folder, decision)
        return path

    def accept(self, poseNode, review: Optional[XrayToDRRPoseReview] = None) -> Path:
        return self.recordDecision(poseNode, "accept", review)

    def reject(self, poseNode, review: Optional[XrayToDRRPoseReview] = None) -> Path:
        return self.recordDecision(poseNode, "reject", review)

    def acceptedRegistrations(self) -> list[Path]:
        from XrayToDRRRegistrationLib.mrml import accepted_registrations

        return accepted_registrations(self.scene)


#
# XrayToDRRRegistrationTest
#


class XrayToDRRRegistrationTest(ScriptedLoadableModuleTest):
    """The panel's workflow on the sample data, through the Logic (needs the engine's packages installed):
    register the simulated X-ray from a perturbed pose, review it live, reset, accept; find its pose from the X-ray
    and CT alone; register two simulated views jointly and review their shared pose."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_workflow_on_sample_data()
        self.setUp()
        self.test_two_views_on_sample_data()

    def test_workflow_on_sample_data(self):
        from XrayToDRRLib import mrml
        from XrayToDRRLib.pose import perturb

        logic = XrayToDRRRegistrationLogic()
        self.assertTrue(logic.dependencies.ensure(askConfirmation=False))
        base = logic.base

        self.delayDisplay("Sample CT and X-ray; a start 4 degrees and 10 mm off the true pose")
        ct, _ = base.loadSampleCT()
        xray, truePose = base.loadSampleXray()
        true = mrml.pose_from_transform_node(truePose)
        start = mrml.pose_to_transform_node(perturb(true, [0.0, 0.0, 4.0], [10.0, 0.0, 0.0],
                                                    logic.volumeCenter(ct)), slicer.mrmlScene, "start")

        self.delayDisplay("Register from the current transform (background job)")
        pose, drr, metrics = logic.register(xray, ct, initPose=start)
        found = mrml.pose_from_transform_node(pose)
        grid = logic.volumeCenter(ct) + 50.0 * np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])

        def reprojection(p):  # mean distance (pixels) of projected CT points from where the true pose puts them
            return float(np.mean(np.linalg.norm(p.project(grid) - true.project(grid), axis=1)))

        self.assertLess(reprojection(found), 0.5 * reprojection(mrml.pose_from_transform_node(start)))
        self.assertIsNotNone(drr)
        self.assertGreater(metrics.GetNumberOfRows(), 0)

        self.delayDisplay("Evaluate against the true pose (mTRE)")
        table = logic.evaluate(pose, truePose)
        rows = {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())}
        self.assertLess(float(rows["pose_error.final.mtre_mm"]), float(rows["pose_error.init.mtre_mm"]))
        self.assertIsNotNone(logic.registrationFigure(pose.GetAttribute(FOLDER)))

        self.delayDisplay("Live review: move, reset, accept")
        review = logic.startReview(pose, ct, xray)
        atResult = review.update(np.zeros(6))
        moved = review.update([0, 0, 3, 5, 0, 0])
        self.assertNotAlmostEqual(moved, atResult, places=3)
        self.assertAlmostEqual(review.reset(), atResult, places=6)
        self.assertTrue(np.allclose(slicer.util.arrayFromTransformMatrix(pose), found.world_from_camera))
        path = logic.accept(pose, review)
        self.assertTrue(path.is_file())
        self.assertEqual(logic.acceptedRegistrations(), [path.parent.resolve()])
        difference, checkerboard = logic.compare(xray, drr)
        self.assertEqual(slicer.util.arrayFromVolume(difference).shape, slicer.util.arrayFromVolume(drr).shape)

        self.delayDisplay("Find pose from the X-ray and the CT alone (global search, background job)")
        candidates, candidateTable = logic.findPose(xray, ct, view="auto", topK=2)
        self.assertGreaterEqual(len(candidates), 2)
        self.assertEqual(candidateTable.GetNumberOfRows(), len(candidates))
        best = mrml.pose_from_transform_node(candidates[0])
        self.assertLess(reprojection(best), reprojection(mrml.pose_from_transform_node(start)) + 20.0)
        self.delayDisplay("Test passed")

    def test_two_views_on_sample_data(self):
        import dataclasses
        import tempfile

        from XrayToDRRLib import mrml
        from XrayToDRRLib.pose import perturb, standard_view
        from XrayToDRRLib.simulate import simulate_xray
        from XrayToDRRLib.xray import Xray

        logic = XrayToDRRRegistrationLogic()
        self.assertTrue(logic.dependencies.ensure(askConfirmation=False))
        self.delayDisplay("Two simulated 64-pixel views (AP, lateral) of the sample CT, the patient moved on the table")
        ct, _ = logic.base.loadSampleCT()
        image, center = mrml.volume_node_to_sitk(ct), logic.volumeCenter(ct)
        nominal = [standard_view(view, center, 1020.0, 64, 64, 5.0, source_to_isocenter=600.0)
                   for view in ("ap", "lateral")]
        true = [perturb(pose, [3.0, -2.0, 2.0], [6.0, -4.0, 5.0], center) for pose in nominal]
        xrays = [mrml.xray_to_volume_node(Xray(simulate_xray(image, pose, seed=k + 1, device=logic.device),
                                                pose.sdd, pose.delx, pose.dely), slicer.mrmlScene, name)
                 for k, (pose, name) in enumerate(zip(true, ("ap", "lat")))]
        rig = [np.eye(4), np.linalg.inv(nominal[0].world_from_camera) @ nominal[1].world_from_camera]
        rigPath = Path(tempfile.mkdtemp()) / "rig.json"
        rigPath.write_text(json.dumps({"views": [{"first_camera_from_camera": m.tolist()} for m in rig]}))
        start = perturb(true[0], [0.0, 0.0, 3.0], [8.0, 0.0, 0.0], center)
        startNode = mrml.pose_to_transform_node(start, slicer.mrmlScene, "start")

        self.delayDisplay("Register both views with one patient pose (rigid rig from rig.json, background job)")
        parent, views, drrs, table = logic.registerViews(xrays, ct, rig=rigPath, initPose=startNode)
        grid = center + 50.0 * np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
        for k, (node, truth) in enumerate(zip(views, true)):

            def reprojection(world):  # mean distance (pixels) of projected CT points from where the truth puts them
                moved = dataclasses.replace(truth, world_from_camera=world)
                return float(np.mean(np.linalg.norm(moved.project(grid) - truth.project(grid), axis=1)))

            self.assertIs(node.GetParentTransformNode(), parent)  # the view's camera relative to view 1's: the rig
            self.assertTrue(np.allclose(slicer.util.arrayFromTransformMatrix(node), rig[k], atol=1e-6))
            found = mrml.pose_from_transform_node(node).world_from_camera
            self.assertLess(reprojection(found), 0.5 * reprojection(start.world_from_camera @ rig[k]))
            self.assertIsNotNone(drrs[k])
        self.assertGreater(table.GetNumberOfRows(), 0)

        self.delayDisplay("Live review: moving the patient pose re-renders both views")
        review = logic.startReview(parent, ct)
        atResult = review.update(np.zeros(6))
        images = [slicer.util.arrayFromVolume(v.node).copy() for v in review.views]
        review.update([0, 0, 3, 5, 0, 0])
        for view, image in zip(review.views, images):
            self.assertFalse(np.allclose(slicer.util.arrayFromVolume(view.node), image))
        self.assertAlmostEqual(review.reset(), atResult, places=6)
        review.close()
        self.delayDisplay("Test passed")
