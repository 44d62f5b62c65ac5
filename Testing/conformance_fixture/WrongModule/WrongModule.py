"""A Slicer module with one deliberate mistake per conformance category (Testing/test_slicer_conformance.py proves
each is caught). Every line marked `# wrong:` names its category; everything else is what Slicer has."""

from pathlib import Path
from typing import Annotated

import qt
import SampleData
import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLVolumeNodeX  # wrong: mrml-class
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper, RangeWithin  # wrong: parameter-wrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)


class WrongModule(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Wrong"
        self.parent.category = "Testing"  # wrong: scripted-module (the property is `categories`)
        slicer.app.connect("startupCompleted()", self.onStartup)

    def onStartup(self):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="Wrong", sampleName="x", uris=["x"], fileNames=["x"], nodeNames=["x"],
            thumbnail="x.png")  # wrong: sample-data (the keyword is `thumbnailFileName`)


@parameterNodeWrapper
class WrongModuleParameterNode:
    volume: vtkMRMLScalarVolumeNode
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    iterations: float = 3.0  # wrong: widget-binding (bound to a QSpinBox, whose connector binds int only)
    weights: set = set()  # wrong: parameter-type
    mask: vtkMRMLLabelMapVolumeNode  # wrong: widget-binding (its selector offers model nodes)


class WrongModuleWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WrongModule.ui"))
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.thresholdSliderWidget.connect("valueChanged(int)", self.onApply)  # wrong: signal
        self.timer = qt.QTimerr()  # wrong: qt-ctk
        path = Path(slicer.app.temporaryPathh)  # wrong: slicer-app

    def onApply(self, value=None):
        slicer.util.setSliceViewerLayers(background=None, fitView=True)  # wrong: slicer-util


class WrongModuleLogic(ScriptedLoadableModuleLogic):
    def process(self, volumeNode):
        scene = slicer.mrmlScene
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetForegroundVolumID(volumeNode.GetID())  # wrong: mrml-method
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmap(None, None)  # wrong: mrml-method


class WrongModuleTest(ScriptedLoadableModuleTest):
    def runTest(self):
        self.delayDisplay("ok")
