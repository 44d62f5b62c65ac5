"""XrayToDRRTranslation 3D Slicer module: learn X-ray -> DRR translation (pix2pix) from accepted registrations.

The panel (XrayToDRRTranslationWidget) only wires widgets to XrayToDRRTranslationLogic, whose methods mirror the
CLI verbs with the same defaults and return MRML nodes (or paths, for folders and checkpoints):

    logic = slicer.util.getModuleLogic("XrayToDRRTranslation")     # or XrayToDRRTranslation.XrayToDRRTranslationLogic()
    pairs, table = logic.buildPairs(logic.acceptedRegistrations(), "/data/pairs")   # xraytodrr pairs
    augmented = logic.augment(pairs, "/data/pairs-augmented")                       # xraytodrr augment
    checkpoint = logic.train(augmented, "/data/run", epochs=50)                     # xraytodrr translate train
    drrLike = logic.predict(xrayNode, checkpoint)                                   # xraytodrr translate predict
    metrics, summary = logic.evaluate("/data/held-out", checkpoint)                 # xraytodrr translate evaluate

Every verb runs in a child process (XrayToDRR's XrayToDRRTask and jobs.Job): the console waits (wait=True), the
panel polls with a QTimer (wait=False), shows progress, the newest training sample image, and can cancel.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
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

FIGURES = ("best", "median", "worst")


def _abs(path) -> Path:
    """A path as the user meant it from this process (jobs run in their own folder)."""
    return Path(path).expanduser().resolve()


def _path(value) -> Optional[Path]:
    """A parameter-node path, None when unset (the wrapper's empty Path is '.')."""
    if value is None or str(value).strip() in ("", "."):
        return None
    return Path(value)


#
# XrayToDRRTranslation
#


class XrayToDRRTranslation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "X-ray to DRR Translation"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = ["XrayToDRR"]
        self.parent.contributors = ["XrayToDRR developers"]
        self.parent.helpText = f"""
Learn to translate X-rays into DRR-like images (pix2pix): build aligned (X-ray, DRR) pairs from accepted
registrations, augment them, train in the background (progress, losses, sample images, cancel, resume), predict
on an X-ray volume (shown over or beside it) and evaluate on held-out pairs (PSNR, SSIM, MAE, figures).
Documentation: the "3D Slicer" section of README.md in the XrayToDRR source (no public home yet).
"""
        self.parent.acknowledgementText = """
pix2pix: P. Isola, J.-Y. Zhu, T. Zhou, A. A. Efros, Image-to-Image Translation with Conditional Adversarial
Networks (CVPR 2017). Built on PyTorch.
"""


#
# XrayToDRRTranslationParameterNode
#


@parameterNodeWrapper
class XrayToDRRTranslationParameterNode:
    # pairs
    registrationFolders: str = ""
    minNcc: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    masked: bool = False
    pairsRenderer: Annotated[str, Choice(["fast", "siddon", "trilinear"])] = "fast"
    pairsFolder: Path
    # augmentation
    copies: Annotated[int, WithinRange(1, 1000)] = 4
    augmentSeed: Annotated[int, WithinRange(0, 2 ** 31 - 1)] = 0
    keepOriginals: bool = True
    augmentedFolder: Path
    rotation: Annotated[float, WithinRange(0.0, 180.0)] = 10.0
    scale: Annotated[float, WithinRange(0.0, 0.9)] = 0.1
    translate: Annotated[float, WithinRange(0.0, 0.5)] = 0.05
    elastic: Annotated[float, WithinRange(0.0, 0.2)] = 0.01
    flip: bool = True
    photometric: bool = True
    # training
    trainingData: Path
    runFolder: Path
    epochs: Annotated[int, WithinRange(1, 100000)] = 200
    batchSize: Annotated[int, WithinRange(1, 1024)] = 1
    imageSize: Annotated[int, WithinRange(32, 2048)] = 256
    learningRate: Annotated[float, WithinRange(1e-7, 1.0)] = 2e-4
    beta1: Annotated[float, WithinRange(0.0, 0.999)] = 0.5
    lambdaL1: Annotated[float, WithinRange(0.0, 10000.0)] = 100.0
    valFraction: Annotated[float, WithinRange(0.0, 0.9)] = 0.1
    ngf: Annotated[int, WithinRange(1, 512)] = 64
    ndf: Annotated[int, WithinRange(1, 512)] = 64
    ganMode: Annotated[str, Choice(["vanilla", "lsgan"])] = "vanilla"
    dropout: Annotated[float, WithinRange(0.0, 0.99)] = 0.5
    saveEvery: Annotated[int, WithinRange(1, 100000)] = 5
    trainSeed: Annotated[int, WithinRange(0, 2 ** 31 - 1)] = 0
    timeLimit: Annotated[float, WithinRange(0.0, 1e7)] = 0.0
    workers: Annotated[int, WithinRange(0, 64)] = 0
    logger: Annotated[str, Choice(["csv", "tensorboard", "wandb"])] = "csv"
    resumeCheckpoint: Path
    # prediction and evaluation
    xrayVolume: vtkMRMLScalarVolumeNode
    checkpoint: Path
    display: Annotated[str, Choice(["over", "beside"])] = "over"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    evaluationPairs: Path
    masks: Path
    boneThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    evaluationFolder: Path
    figure: Annotated[str, Choice(["median", "best", "worst"])] = "median"


#
# XrayToDRRTranslationWidget
#


class XrayToDRRTranslationWidget(TaskRunnerMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to XrayToDRRTranslationLogic; runs the verbs as background jobs polled by a QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._trainingRun = None  # run folder of the training job being followed (sample images)
        self._shownSample = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XrayToDRRTranslation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XrayToDRRTranslationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.setupTaskRunner([self.ui.buildPairsButton, self.ui.augmentButton, self.ui.trainButton,
                              self.ui.resumeButton, self.ui.predictButton, self.ui.evaluateButton])
        self.ui.addRegistrationFolderButton.connect("clicked(bool)", self.onAddRegistrationFolder)
        self.ui.acceptedRegistrationsButton.connect("clicked(bool)", self.onAcceptedRegistrations)
        self.ui.buildPairsButton.connect("clicked(bool)", self.onBuildPairs)
        self.ui.augmentButton.connect("clicked(bool)", self.onAugment)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.predictButton.connect("clicked(bool)", self.onPredict)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.openFigureButton.connect("clicked(bool)", self.onOpenFigure)
        self.ui.figureComboBox.connect("currentIndexChanged(int)", lambda index: self._showFigure())
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
        if not self._parameterNode.xrayVolume:
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if node.GetAttribute("XrayToDRR.kind") == "xray":
                    self._parameterNode.xrayVolume = node
                    break

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # --- running steps (TaskRunnerMixin), following a training run -------------------------------------------------
    def _start(self, button, start, onDone=None, runFolder=None) -> None:
        """TaskRunnerMixin's step; `runFolder`: a training run whose epoch lines and sample images are shown."""
        def startFollowing():
            task = start()
            self._trainingRun, self._shownSample = runFolder, None  # only once the step really started
            return task

        super()._start(button, startFollowing, onDone)

    def _taskPolled(self, task, events: list[dict]) -> None:
        for event in events:
            message = str(event.get("message", ""))
            if event.get("event") == "log" and message.startswith("epoch "):
                self.ui.trainingStatusLabel.text = message
        if self._trainingRun is not None:
            self._showSample(self._trainingRun)

    def _showImage(self, label, path) -> None:
        """A PNG in a QLabel, scaled to the label's width (aspect kept)."""
        pixmap = qt.QPixmap(str(path))
        if pixmap.isNull():
            return
        width = max(label.width, 200)
        label.setPixmap(pixmap.scaledToWidth(width, qt.Qt.SmoothTransformation))
        label.toolTip = str(path)

    def _showSample(self, runFolder) -> None:
        sample = self.logic.latestSample(runFolder)
        if sample is not None and sample != self._shownSample:
            self._shownSample = sample
            self._showImage(self.ui.sampleImageLabel, sample)

    # --- buttons ---------------------------------------------------------------------------------------------------
    def onAddRegistrationFolder(self, checked=False) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Registration output folder")
        if folder:
            p = self._parameterNode
            p.registrationFolders = "; ".join(self.logic.splitFolders(p.registrationFolders) + [folder])

    def onAcceptedRegistrations(self, checked=False) -> None:
        folders = self.logic.acceptedRegistrations()
        if not folders:
            slicer.util.infoDisplay("No registration has been accepted in this scene yet (X-ray to DRR Registration "
                                    "module: review a result, then Accept).", windowTitle="XrayToDRR")
            return
        self._parameterNode.registrationFolders = "; ".join(str(f) for f in folders)

    def onBuildPairs(self, checked=False) -> None:
        p = self._parameterNode

        def done(result):
            folder, table = result
            p.pairsFolder = folder
            if not _path(p.trainingData):
                p.trainingData = folder
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()

        self._start(self.ui.buildPairsButton, lambda: self.logic.buildPairs(
            p.registrationFolders, _path(p.pairsFolder), p.minNcc or None, p.masked, renderer=p.pairsRenderer,
            wait=False), done)

    def onAugment(self, checked=False) -> None:
        p = self._parameterNode

        def done(folder):
            p.augmentedFolder = folder
            p.trainingData = folder

        self._start(self.ui.augmentButton, lambda: self.logic.augment(
            _path(p.pairsFolder), _path(p.augmentedFolder), p.copies, p.augmentSeed, p.keepOriginals, p.rotation,
            p.scale, p.translate, p.elastic, p.flip, p.photometric, wait=False), done)

    def _trainingDone(self, checkpoint) -> None:
        p = self._parameterNode
        p.checkpoint = checkpoint
        p.resumeCheckpoint = checkpoint
        self._showSample(Path(checkpoint).parent)

    def onTrain(self, checked=False) -> None:
        p = self._parameterNode
        if self._task is None and not _path(p.runFolder):
            p.runFolder = self.logic.newRunFolder()
        self._start(self.ui.trainButton, lambda: self.logic.train(
            _path(p.trainingData), _path(p.runFolder), p.epochs, p.batchSize, p.learningRate, p.beta1, p.lambdaL1,
            p.imageSize, p.valFraction, None, p.logger, p.trainSeed, p.ngf, p.ndf, p.ganMode, p.dropout,
            p.saveEvery, p.workers, p.timeLimit or None, wait=False), self._trainingDone, _path(p.runFolder))

    def onResume(self, checked=False) -> None:
        p = self._parameterNode
        resume = _path(p.resumeCheckpoint) or _path(p.runFolder)
        if self._task is None and resume is None:
            slicer.util.infoDisplay("Choose the checkpoint (or the run folder) to resume.", windowTitle="XrayToDRR")
            return
        runFolder = _path(p.runFolder) or (self.logic.checkpointOf(resume).parent if resume else None)
        self._start(self.ui.resumeButton, lambda: self.logic.train(
            _path(p.trainingData), runFolder, p.epochs, saveEvery=p.saveEvery, resume=resume, log=p.logger,
            workers=p.workers, timeLimit=p.timeLimit or None, wait=False), self._trainingDone, runFolder)

    def onPredict(self, checked=False) -> None:
        p = self._parameterNode

        def done(node):
            slicer.util.resetSliceViews()

        self._start(self.ui.predictButton, lambda: self.logic.predict(
            p.xrayVolume, _path(p.checkpoint), display=p.display, opacity=p.opacity, wait=False), done)

    def onEvaluate(self, checked=False) -> None:
        p = self._parameterNode

        def done(result):
            table, summary = result
            p.evaluationFolder = Path(table.GetAttribute("XrayToDRR.folder"))
            m = summary["metrics"]
            self.ui.metricsLabel.text = (
                f"{summary['n_pairs']} pairs: PSNR {m['psnr']['mean']:.2f} dB, SSIM {m['ssim']['mean']:.4f}, "
                f"MAE {m['mae']['mean']:.4f}" + (f", bone Dice {m['dice']['mean']:.3f}" if "dice" in m else ""))
            self._showFigure()

        self._start(self.ui.evaluateButton, lambda: self.logic.evaluate(
            _path(p.evaluationPairs) or _path(p.pairsFolder), _path(p.checkpoint), _path(p.evaluationFolder),
            _path(p.masks), p.boneThreshold or None, wait=False), done)

    def _showFigure(self) -> None:
        folder = _path(self._parameterNode.evaluationFolder) if self._parameterNode else None
        figure = self.logic.evaluationFigure(folder, self._parameterNode.figure) if folder else None
        if figure is not None:
            self._showImage(self.ui.figureLabel, figure)

    def onOpenFigure(self, checked=False) -> None:
        folder = _path(self._parameterNode.evaluationFolder)
        figure = self.logic.evaluationFigure(folder, self._parameterNode.figure) if folder else None
        if figure is None:
            slicer.util.infoDisplay("Evaluate first: no figure yet.", windowTitle="XrayToDRR")
            return
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(figure)))

    def onOpacityChanged(self, value) -> None:
        self.logic.base.setOverlayOpacity(value)


#
# XrayToDRRTranslationLogic
#


class XrayToDRRTranslationLogic(ScriptedLoadableModuleLogic):
    """The module's console API: one method per CLI verb (`pairs`, `augment`, `translate train|predict|evaluate`),
    with the verb's defaults. Each runs the verb in a child process: wait=True (default) blocks and returns the
    result; wait=False returns an XrayToDRRTask (poll it, `task.wait()` or `task.finish()` gives the result).

    Settings shared with the XrayToDRR module's Logic (`self.base`): device (auto | cpu | cuda), python (the
    interpreter of the jobs), workFolder (where jobs write; default: Slicer's temporary folder)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.base = XrayToDRRLogic()

    def getParameterNode(self):
        return XrayToDRRTranslationParameterNode(super().getParameterNode())

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
    @staticmethod
    def splitFolders(folders) -> list[str]:
        """'a; b' / ['a', 'b'] / Path -> ['a', 'b'] (empty entries dropped)."""
        if folders is None:
            return []
        if isinstance(folders, (str, Path)):
            folders = str(folders).replace("\n", ";").split(";")
        return [str(f).strip() for f in folders if str(f).strip()]

    def newRunFolder(self) -> Path:
        """A fresh folder for a training run (under the work folder)."""
        return self.base._newFolder("translation-run") / "run"

    @staticmethod
    def checkpointOf(path) -> Path:
        """A checkpoint file, or a run folder's latest.pth.tar."""
        path = Path(path)
        return path / "latest.pth.tar" if path.is_dir() else path

    def acceptedRegistrations(self) -> list[Path]:
        """Registration output folders accepted in the X-ray to DRR Registration module (this scene)."""
        from XrayToDRRRegistrationLib.mrml import accepted_registrations

        return accepted_registrations(self.scene)

    def reviewedInputs(self, registrationFolders, stagingFolder) -> list[Path]:
        """The registration folders `pairs` should read, after their reviews (review.json): rejected ones are left
        out; an accepted one whose reviewed pose differs from its pose.json is staged (a copy in `stagingFolder`
        with the reviewed pose and absolute CT paths), so its pair is rendered at the pose the reviewer accepted."""
        import torch
        from XrayToDRRLib.errors import InputError
        from XrayToDRRLib.pose import load_pose
        from XrayToDRRLib.torchfiles import load_torch_file
        from XrayToDRRRegistrationLib.mrml import read_review, reviewed_pose
        from XrayToDRRTranslationLib.pairs import find_registration_folders

        kept = []
        for folder in find_registration_folders(self.splitFolders(registrationFolders)):
            review = read_review(folder)
            if review is not None and review["decision"] == "reject":
                logging.info(f"XrayToDRRTranslation: {folder} left out (rejected in review)")
                continue
            pose = reviewed_pose(folder)
            if pose is None or np.allclose(pose.world_from_camera, load_pose(folder / "pose.json").world_from_camera,
                                           atol=1e-9):
                kept.append(folder)
                continue
            staged = Path(stagingFolder) / folder.name
            if staged.exists():  # two accepted folders of one name: pairs then prefixes the parent's name too
                staged = Path(stagingFolder) / folder.parent.name / folder.name
            staged.mkdir(parents=True, exist_ok=False)
            for name in ("gt.png", "metrics.json"):
                shutil.copy2(folder / name, staged / name)
            pose.save(staged / "pose.json")
            params = load_torch_file(folder / "parameters.pt", "give the parameters.pt written by xraytodrr register")
            settings = dict(params.get("settings") or {}) if isinstance(params, dict) else {}
            if not settings.get("volume"):
                raise InputError("has no settings['volume']", folder / "parameters.pt", "register again")
            for key in ("volume", "mask"):
                if settings.get(key):
                    p = Path(str(settings[key]))
                    settings[key] = str(p if p.is_absolute() or not (folder / p).exists() else (folder / p).resolve())
            torch.save({**params, "settings": settings}, staged / "parameters.pt")
            logging.info(f"XrayToDRRTranslation: {folder} uses its reviewed pose")
            kept.append(staged)
        return kept

    def latestSample(self, runFolder) -> Optional[Path]:
        """The newest sample image of a training run (samples/epoch_NNNN.png), None before the first epoch ends."""
        if runFolder is None:
            return None
        samples = sorted(Path(runFolder).glob("samples/epoch_*.png"))
        return samples[-1] if samples else None

    def trainingHistory(self, runFolder) -> list[dict]:
        """log.csv of a training run: one dict per epoch (epoch, loss_G, loss_D, loss_L1, val_psnr, ...)."""
        from XrayToDRRTranslationLib.mrml import read_csv_rows

        path = Path(runFolder) / "log.csv"
        return read_csv_rows(path) if path.is_file() else []

    def trainingTable(self, runFolder):
        """log.csv of a training run as a table node."""
        from XrayToDRRTranslationLib.mrml import csv_to_table_node

        return csv_to_table_node(Path(runFolder) / "log.csv", self.scene, f"{Path(runFolder).name} training log")

    @staticmethod
    def evaluationFigure(folder, which: str = "median") -> Optional[Path]:
        """best.png / median.png / worst.png of an evaluation folder (None when absent)."""
        if folder is None or which not in FIGURES:
            return None
        path = Path(folder) / f"{which}.png"
        return path if path.is_file() else None

    @staticmethod
    def _require(value, what: str):
        from XrayToDRRLib.errors import InputError

        if value is None or (isinstance(value, (str, Path)) and str(value).strip() in ("", ".")):
            raise InputError(f"no {what} given", None, f"choose the {what}")
        return value

    # --- verbs -----------------------------------------------------------------------------------------------------
    def buildPairs(self, registrationFolders, outputFolder=None, minNcc: Optional[float] = None,
                   masked: bool = False, useReviews: bool = True, renderer: str = "fast", mode: str = "hq",
                   minConfidence: float = 0.5, patientIdFrom: Optional[str] = None, wait: bool = True):
        """Aligned (X-ray, DRR) pairs from registration output folders (`xraytodrr pairs`): a list, or a string
        separated by ';'; each a registration folder or a folder of them. useReviews: rejected folders are left out
        and accepted poses are used (see `reviewedInputs`). renderer: fast (`mode` hq | full) | siddon | trilinear.
        minConfidence: registrations whose confidence is below it are left out (listed in pairs.csv; 0 keeps all).
        patientIdFrom: each pair's patient id (for train's splitBy="patient"): "parent" | "grandparent" (folder
        names) | "csv:FILE"; None: one unnamed patient.
        Default output: a new temporary folder. Returns (output folder, table node of pairs.csv)."""
        from XrayToDRRTranslationLib.mrml import csv_to_table_node

        self.base._requireEngine()
        folder = self.base._newFolder("pairs")
        folders = self.splitFolders(registrationFolders)
        self._require(folders or None, "registration folders")
        inputs = self.reviewedInputs(folders, folder / "reviewed") if useReviews else [_abs(f) for f in folders]
        if not inputs:
            from XrayToDRRLib.errors import InputError

            raise InputError("every registration folder was rejected in review", None, "accept some registrations")
        out = _abs(outputFolder) if outputFolder else folder / "pairs"
        args = ["pairs", "-o", out, "--device", self.device, "--renderer", renderer, "--mode", mode,
                "--min-confidence", minConfidence]
        if minNcc is not None:
            args += ["--min-ncc", minNcc]
        if masked:
            args.append("--masked")
        if patientIdFrom:
            args += ["--patient-id-from", patientIdFrom]
        args += [str(f) for f in inputs]

        def finish(outputs):
            table = csv_to_table_node(out / "pairs.csv", self.scene, f"pairs {out.name}")
            table.SetAttribute("XrayToDRR.folder", str(out))
            return out, table

        return self.base._run("Building pairs", args, folder, [out], finish, wait)

    def pairsFromVolumes(self, inputVolumeNode, targetVolumeNode, outputFolder=None, axis: str = "z",
                         wait: bool = True):
        """Slice pairs from two volumes on the same grid, e.g. MRI -> CT (`xraytodrr pairs --volumes`).
        Returns (output folder, table node of pairs.csv)."""
        from XrayToDRRTranslationLib.mrml import csv_to_table_node

        self.base._requireEngine()
        folder = self.base._newFolder("pairs")
        self.base._writeVolume(self._require(inputVolumeNode, "input volume"), folder / "input.nrrd")
        self.base._writeVolume(self._require(targetVolumeNode, "target volume"), folder / "target.nrrd")
        out = _abs(outputFolder) if outputFolder else folder / "pairs"
        args = ["pairs", "-o", out, "--volumes", "input.nrrd", "target.nrrd", "--axis", axis]

        def finish(outputs):
            table = csv_to_table_node(out / "pairs.csv", self.scene, f"pairs {out.name}")
            table.SetAttribute("XrayToDRR.folder", str(out))
            return out, table

        return self.base._run("Building pairs", args, folder, [out], finish, wait)

    def augment(self, pairsFolder, outputFolder=None, copies: int = 4, seed: int = 0, originals: bool = True,
                rotation: float = 10.0, scale: float = 0.1, translate: float = 0.05, elastic: float = 0.01,
                flip: bool = True, photometric: bool = True, wait: bool = True):
        """Paired augmentation (`xraytodrr augment`). Default output: PAIRS-augmented beside the input folder.
        Returns the output folder."""
        self.base._requireEngine()
        pairsFolder = _abs(self._require(pairsFolder, "pairs folder"))
        out = _abs(outputFolder) if outputFolder else pairsFolder.with_name(f"{pairsFolder.name}-augmented")
        folder = self.base._newFolder("augment")
        args = ["augment", "-i", pairsFolder, "-o", out, "--copies", int(copies), "--seed", int(seed),
                "--originals" if originals else "--no-originals", "--rotation", rotation, "--scale", scale,
                "--translate", translate, "--elastic", elastic, "--flip" if flip else "--no-flip",
                "--photometric" if photometric else "--no-photometric"]
        return self.base._run("Augmenting pairs", args, folder, [out], lambda outputs: out, wait)

    def train(self, pairsFolder=None, runFolder=None, epochs: int = 200, batchSize: int = 1, lr: float = 2e-4,
              beta1: float = 0.5, lambdaL1: float = 100.0, imageSize: int = 256, valFraction: float = 0.1,
              resume=None, log: str = "csv", seed: int = 0, ngf: int = 64, ndf: int = 64, ganMode: str = "vanilla",
              dropout: float = 0.5, saveEvery: int = 5, workers: int = 0, timeLimit: Optional[float] = None,
              threads: Optional[int] = None, splitBy: str = "pair", perceptualLoss: float = 0.0,
              perceptualNet: str = "discriminator", attention: bool = False, augment: str = "none",
              wait: bool = True):
        """Train pix2pix (`xraytodrr translate train`) into `runFolder` (default: a new folder). resume: a checkpoint
        or a run folder (its latest.pth.tar) to continue up to `epochs` (architecture, optimiser and split then
        come from the checkpoint, the data too when `pairsFolder` is None). splitBy: "pair" (random validation
        pairs) | "patient" (whole patients held out). perceptualLoss (weight, 0: off) with perceptualNet
        "discriminator" | "vgg16", attention, augment "none" | "cross-patient": the CLI's options beside the
        pix2pix default. Returns the run's latest.pth.tar."""
        self.base._requireEngine()
        args = ["translate", "train", "--epochs", int(epochs), "--save-every", int(saveEvery), "--log", log,
                "--workers", int(workers), "--device", self.device]
        if resume is not None:
            resume = self.checkpointOf(_abs(resume))
            runFolder = _abs(runFolder) if runFolder else resume.parent
            args += ["--resume", resume]
        else:
            args += ["--batch-size", int(batchSize), "--lr", lr, "--beta1", beta1, "--lambda-l1", lambdaL1,
                     "--image-size", int(imageSize), "--val-fraction", valFraction, "--seed", int(seed),
                     "--ngf", int(ngf), "--ndf", int(ndf), "--gan-mode", ganMode, "--dropout", dropout,
                     "--split-by", splitBy, "--perceptual-loss", perceptualLoss, "--perceptual-net", perceptualNet,
                     "--augment", augment]
            if attention:
                args.append("--attention")
            self._require(pairsFolder, "training pairs folder")
        runFolder = _abs(runFolder) if runFolder else self.newRunFolder()
        if pairsFolder is not None:
            args += ["-i", _abs(pairsFolder)]
        args += ["-o", runFolder]
        if timeLimit:
            args += ["--time-limit", timeLimit]
        if threads:
            args += ["--threads", int(threads)]
        folder = self.base._newFolder("translation-train")
        title = "Resuming training" if resume is not None else "Training pix2pix"
        return self.base._run(title, args, folder, [runFolder], lambda outputs: runFolder / "latest.pth.tar", wait)

    def predict(self, xrayNode, checkpoint, name: Optional[str] = None, display: str = "over",
                opacity: float = 0.5, wait: bool = True):
        """Translate the X-ray held by a volume node into a DRR-like image (`xraytodrr translate predict`): a new
        volume node on the X-ray's grid (same size, spacing and plane), shown over it in the Red view
        (display='over', with `opacity`) or beside it in the Yellow view ('beside'). Returns the node."""
        from XrayToDRRLib import mrml
        from XrayToDRRTranslationLib.mrml import show_translation, translated_to_volume_node

        self.base._requireEngine()
        xray = mrml.xray_from_volume_node(self._require(xrayNode, "X-ray volume"))
        checkpoint = self.checkpointOf(_abs(self._require(checkpoint, "checkpoint")))
        folder = self.base._newFolder("translate-predict")
        np.save(folder / "xray.npy", np.asarray(xray.pixels, dtype=np.float32))
        out = folder / "translated"
        args = ["translate", "predict", "-i", "xray.npy", "--checkpoint", checkpoint, "-o", "translated",
                "--device", self.device]
        name = name or f"{xrayNode.GetName()} translated"

        def finish(outputs):
            node = translated_to_volume_node(np.load(out / "xray.npy"), xrayNode, self.scene, name, checkpoint)
            show_translation(self.scene, xrayNode, node, display, opacity)
            return node

        return self.base._run("Translating the X-ray", args, folder, [out], finish, wait)

    def evaluate(self, pairsFolder, checkpoint, outputFolder=None, masks=None, boneThreshold: Optional[float] = None,
                 wait: bool = True):
        """PSNR, SSIM, MAE (and bone Dice with `masks`) on held-out pairs (`xraytodrr translate evaluate`).
        Default output: a new temporary folder. Returns (table node of metrics.csv, summary dict); the folder
        (best.png, median.png, worst.png) is the table's attribute XrayToDRR.folder."""
        from XrayToDRRTranslationLib.mrml import csv_to_table_node

        self.base._requireEngine()
        checkpoint = self.checkpointOf(_abs(self._require(checkpoint, "checkpoint")))
        folder = self.base._newFolder("translate-evaluate")
        out = _abs(outputFolder) if outputFolder else folder / "evaluation"
        args = ["translate", "evaluate", "--pairs", _abs(self._require(pairsFolder, "held-out pairs folder")),
                "--checkpoint", checkpoint, "-o", out, "--device", self.device]
        if masks is not None:
            args += ["--masks", _abs(masks)]
        if boneThreshold is not None:
            args += ["--bone-threshold", boneThreshold]

        def finish(outputs):
            table = csv_to_table_node(out / "metrics.csv", self.scene, f"translation metrics {out.name}")
            table.SetAttribute("XrayToDRR.folder", str(out))
            return table, json.loads((out / "summary.json").read_text())

        return self.base._run("Evaluating", args, folder, [out], finish, wait)


#
# XrayToDRRTranslationTest
#


class XrayToDRRTranslationTest(ScriptedLoadableModuleTest):
    """The panel's workflow on the sample data, through the Logic (needs the engine's packages installed): a
    registration folder from the sample X-ray and its true pose, pairs, augmentation, a tiny training run, a
    prediction over the X-ray and an evaluation."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_workflow_on_sample_data()

    def test_workflow_on_sample_data(self):
        import torch
        from XrayToDRRLib import mrml
        from XrayToDRRLib.demo import bundled_ct
        from XrayToDRRLib.images import save_image

        logic = XrayToDRRTranslationLogic()
        self.assertTrue(logic.dependencies.ensure(askConfirmation=False))
        base = logic.base

        self.delayDisplay("Sample X-ray at its true pose: one accepted registration folder")
        xray, poseNode = base.loadSampleXray()
        pose = mrml.pose_from_transform_node(poseNode)
        root = base._newFolder("translation-test")
        registration = root / "registrations" / "sample"
        registration.mkdir(parents=True)
        pose.save(registration / "pose.json")
        pixels = slicer.util.arrayFromVolume(xray)[0].astype(np.float64)
        save_image((pixels - pixels.min()) / max(np.ptp(pixels), 1e-6), registration / "gt.png")
        (registration / "metrics.json").write_text(json.dumps({"ncc": 0.9}))
        torch.save({"settings": {"volume": str(bundled_ct()[0]), "mask": None, "labels": None}},
                   registration / "parameters.pt")

        self.delayDisplay("Pairs, augmentation")
        pairs, table = logic.buildPairs([registration], root / "pairs")
        self.assertEqual(table.GetNumberOfRows(), 1)
        augmented = logic.augment(pairs, root / "augmented", copies=3)
        self.assertEqual(len(list((augmented / "xray").glob("*.png"))), 4)

        self.delayDisplay("Training (2 epochs, 64 px), then resuming to 3")
        checkpoint = logic.train(augmented, root / "run", epochs=2, imageSize=64, ngf=8, ndf=8, valFraction=0.25)
        self.assertTrue(checkpoint.is_file())
        self.assertIsNotNone(logic.latestSample(root / "run"))
        checkpoint = logic.train(None, root / "run", epochs=3, resume=checkpoint)
        self.assertEqual(len(logic.trainingHistory(root / "run")), 3)

        self.delayDisplay("Prediction over the X-ray, evaluation")
        translated = logic.predict(xray, checkpoint)
        self.assertEqual(slicer.util.arrayFromVolume(translated).shape, slicer.util.arrayFromVolume(xray).shape)
        self.assertEqual(translated.GetSpacing(), xray.GetSpacing())
        metrics, summary = logic.evaluate(pairs, checkpoint)
        self.assertEqual(summary["n_pairs"], 1)
        self.assertIsNotNone(logic.evaluationFigure(metrics.GetAttribute("XrayToDRR.folder")))
        self.delayDisplay("Test passed")
