"""RayEmbRegistration: the 3D Slicer scripted module (GUI + a thin logic adapter).

Owns only what is Slicer-facing: the module description, the parameter node, the widget (loaded from
``Resources/UI/RayEmbRegistration.ui``), installing the Python dependencies on first use after the user
confirms, progress dialogs with Cancel, and the self-test. Everything computational is in
``RayEmbRegistrationLib`` (Qt-free, also used by the ``rayemb`` CLI); scene conversions are in
``RayEmbRegistrationLib.mrml``. Nothing heavy (torch, OpenCV, ...) is imported when Slicer loads the module.
"""

import importlib
import logging
import os
import pathlib
import sys
from typing import Annotated, Optional

import ctk
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

# ----------------------------------------------------------------------------------------------------------
# Python dependencies: installed into Slicer's Python on first use, after the user confirms. Never vtk,
# SimpleITK, slicer-core or opencv-python (the Qt one): Slicer ships its own VTK/SimpleITK/Qt.
# ----------------------------------------------------------------------------------------------------------

#: never installed into Slicer's Python by this module (Slicer ships VTK, SimpleITK and Qt; torch comes through the
#: PyTorch extension). What IS installed is the library's one dependency list, Resources/requirements.txt
#: (``RayEmbRegistrationLib.resources.requirements()``).
SKIP_PACKAGES = ["vtk", "SimpleITK", "slicer-core", "opencv-python", "opencv-contrib-python", "PyQt5", "PySide6", "torch"]


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
See the <a href="https://github.com/RayEmbRegistration/RayEmbRegistration#readme">documentation</a>.
"""
        )
        self.parent.acknowledgementText = _(
            """
Method: P. Shrestha, C. Xie, Y. Shishido, et al., "RayEmb: Arbitrary Landmark Detection in X-Ray Images Using
Ray Embedding Subspace", ACCV 2024. Rendering with nanodrr and DiffDRR (V. Gopalakrishnan); the refinement with Joseph's method (P. M. Joseph,
IEEE TMI 1982).
Module layout follows the 3D Slicer scripted module template (Kitware, Isomics, PerkLab).
"""
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Add the bundled sample CT to the Sample Data module (a local file, nothing is downloaded)."""
    try:
        import SampleData
    except ImportError:
        return
    ct = resourcePath("SampleData/pelvis_abdomen_totalseg_3mm.nii.gz")
    if not os.path.isfile(ct):
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="RayEmbRegistration",
        sampleName="RayEmbPelvisCT",
        thumbnailFileName=resourcePath("Icons/RayEmbRegistration.png"),
        uris=pathlib.Path(ct).as_uri(),
        fileNames="pelvis_abdomen_totalseg_3mm.nii.gz",
        nodeNames="RayEmbPelvisCT",
        loadFileType="VolumeFile",
    )


#
# RayEmbRegistrationParameterNode
#


@parameterNodeWrapper
class RayEmbRegistrationParameterNode:
    """The parameters of the module (saved with the scene).

    ctVolume, xrayVolume, fiducials: inputs (fiducials optional: automatic bone points otherwise).
    sourceToDetectorMM, pixelSpacingU/V, principalPointU/V: detector geometry; 0 (or principalPointAtCentre)
        means "take it from the X-ray node" (its RayEmb.* attributes / spacing), see mrml.volume_node_to_xray.
    logTransform: the X-ray holds raw intensities (bone dark): convert to line integrals.
    modelSource/modelFile/finetunedModelFile, device, autoBonePoints, refine, iterations, resolution: options.
    prepareMinutes, preparedFolder: the budget of "Prepare this CT" and the prepared-CT folder it made
        (``modelSource == "prepared"`` registers with that folder's weights and templates).
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
    modelSource: Annotated[str, Choice(["bundled", "prepared", "fine-tuned", "file"])] = "bundled"
    modelFile: pathlib.Path
    finetunedModelFile: pathlib.Path
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    autoBonePoints: bool = True
    refine: bool = True
    iterations: Annotated[int, WithinRange(1, 5000)] = 60
    resolution: Annotated[int, WithinRange(32, 1024)] = 96
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    prepareMinutes: Annotated[int, WithinRange(1, 240)] = 10
    preparedFolder: pathlib.Path


#
# Progress dialog with Cancel, driven by the Lib's progress(fraction, message) / cancel() callbacks
#


class ProgressDialog:
    """Modal progress dialog; ``progress``/``cancel`` are the callbacks the Lib's long functions accept.

    Each callback processes pending Qt events, so Slicer keeps repainting and the Cancel button works while
    the computation runs in steps on the main thread.
    """

    def __init__(self, title: str):
        self.dialog = slicer.util.createProgressDialog(windowTitle=title, labelText=title, maximum=1000)
        self.dialog.setCancelButtonText(_("Cancel"))
        self.dialog.minimumDuration = 0
        self.dialog.show()
        slicer.app.processEvents()

    def progress(self, fraction: float, message: str = "") -> None:
        self.dialog.setValue(int(1000 * min(max(float(fraction), 0.0), 1.0)))
        if message:
            self.dialog.labelText = message
            logging.info(f"RayEmbRegistration: {message} ({100 * fraction:.0f}%)")
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

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(resourcePath("UI/RayEmbRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

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

        # Buttons
        self.ui.detectButton.connect("clicked(bool)", self.onDetectButton)
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetuneButton)
        self.ui.prepareButton.connect("clicked(bool)", self.onPrepareButton)
        self._prepareProcess = None

        self.ui.fiducialsPlaceWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.fiducialsPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
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
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
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
        self.ui.finetuneButton.enabled = bool(p.ctVolume)
        self.ui.prepareButton.enabled = bool(p.ctVolume) or self._prepareProcess is not None
        self.ui.modelPathLineEdit.enabled = p.modelSource == "file"
        self.ui.preparedFolderLineEdit.enabled = p.modelSource == "prepared"
        self.ui.principalPointUSpinBox.enabled = not p.principalPointAtCentre
        self.ui.principalPointVSpinBox.enabled = not p.principalPointAtCentre

    # --- input helpers ---------------------------------------------------------------------------------------
    def onXRayChanged(self, node) -> None:
        """Fill empty geometry fields from the X-ray node's attributes (the node itself is not modified)."""
        if node is None or self._parameterNode is None:
            return
        from RayEmbRegistrationLib import mrml

        try:
            geo = mrml.read_xray_geometry(node)
        except ValueError as exc:
            logging.warning(str(exc))
            return
        p = self._parameterNode
        if geo["source_to_detector_mm"] and not p.sourceToDetectorMM:
            p.sourceToDetectorMM = float(geo["source_to_detector_mm"])
        if geo["principal_point_px"] is not None:
            p.principalPointAtCentre = False
            p.principalPointU, p.principalPointV = (float(x) for x in geo["principal_point_px"])

    def onFiducialsChanged(self, node) -> None:
        self.ui.fiducialsPlaceWidget.setCurrentNode(node)

    def onOverlayOpacityChanged(self, value: float) -> None:
        self.logic.setOverlayOpacity(value)

    def onResultRowClicked(self, index) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the heatmap."), waitCursor=True):
            self.logic.showHeatmap(index.row(), self._parameterNode)

    # --- actions -----------------------------------------------------------------------------------------------
    def _ensureDependencies(self) -> bool:
        if self.logic.missingDependencies() or not self.logic.torchAvailable():
            return self.logic.installDependencies(askConfirmation=True)
        return True

    def _runWithProgress(self, title: str, logicCall):
        """Run ``logicCall(parameterNode, progress, cancel)`` under a progress dialog with Cancel.

        Returns ``(True, value)``, or ``(False, None)`` if the user cancelled (status label says so); other
        errors propagate to the caller's ``tryWithErrorDisplay``.
        """
        from RayEmbRegistrationLib.progress import Cancelled

        with ProgressDialog(title) as dlg:
            try:
                return True, logicCall(self._parameterNode, dlg.progress, dlg.cancel)
            except Cancelled:
                self.ui.statusLabel.text = _("Cancelled.")
                return False, None

    def onDetectButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to detect landmarks."), waitCursor=True):
            if not self._ensureDependencies():
                return
            done, result = self._runWithProgress(_("Detecting landmarks"), self.logic.detect)
            if done:
                check = result.pose_check
                self.ui.statusLabel.text = check.message if check is not None else _("Detected (pixels unverified).")
                verified = check is not None and check.verified
                self.ui.statusLabel.setStyleSheet("" if verified else f"color: {self.logic.VERDICT_COLORS['uncertain']};")
                self._showResults()

    def onRegisterButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
            if not self._ensureDependencies():
                return
            done, result = self._runWithProgress(_("Registering X-ray to CT"), self.logic.register)
            if done:
                self.ui.statusLabel.text = self.logic.summary(result)
                color = self.logic.VERDICT_COLORS.get(getattr(result.verdict, "status", ""), "")
                self.ui.statusLabel.setStyleSheet(f"color: {color}; font-weight: bold;" if color else "")
                self._showResults()

    def onFinetuneButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Fine-tuning failed."), waitCursor=True):
            if not slicer.util.confirmOkCancelDisplay(
                _("Fine-tune the network on this CT? This renders training DRRs and trains for several minutes "
                  "(much faster on a GPU).")
            ):
                return
            if not self._ensureDependencies():
                return
            done, path = self._runWithProgress(_("Fine-tuning on this CT"), self.logic.finetune)
            if done:
                self.ui.statusLabel.text = _("Fine-tuned model saved: {path}").format(path=path)

    # --- "Prepare this CT": rayemb prepare in a separate process (qt.QProcess), Slicer stays responsive -------
    def onPrepareButton(self) -> None:
        if self._prepareProcess is not None:  # second press: stop the training early (the folder is still completed)
            self._prepareProcess.terminate()
            self.ui.readinessLabel.text = _("Stopping: the training stops early, then the self-check completes the folder.")
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the preparation."), waitCursor=True):
            if not self._ensureDependencies():
                return
            program, arguments, env, outDir = self.logic.prepareCommand(self._parameterNode)
            proc = qt.QProcess()
            environment = qt.QProcessEnvironment.systemEnvironment()
            for key, value in env.items():
                environment.insert(key, value)
            proc.setProcessEnvironment(environment)
            proc.setProgram(program)
            proc.setArguments(arguments)
            proc.connect("readyReadStandardError()", lambda: self._onPrepareOutput(proc))
            proc.connect("finished(int,QProcess::ExitStatus)", lambda code, status: self._onPrepareFinished(proc, code, outDir))
            self._prepareProcess = proc
            self.ui.prepareButton.text = _("Stop preparing")
            self.ui.prepareProgressBar.value = 0
            self.ui.prepareProgressBar.visible = True
            self.ui.readinessLabel.text = _("Preparing this CT in the background ({minutes} min)…").format(
                minutes=self._parameterNode.prepareMinutes)
            proc.start()

    def _onPrepareOutput(self, proc) -> None:
        from RayEmbRegistrationLib.cli.common import parse_progress_line

        text = bytes(proc.readAllStandardError().data()).decode("utf-8", "replace")
        for line in text.splitlines():
            parsed = parse_progress_line(line)
            if parsed is not None:
                _desc, fraction, message = parsed
                self.ui.prepareProgressBar.value = int(1000 * fraction)
                self.ui.readinessLabel.text = message
            elif line.strip():
                logging.info(f"rayemb prepare: {line}")

    def _onPrepareFinished(self, proc, exitCode: int, outDir: str) -> None:
        self._prepareProcess = None
        self.ui.prepareButton.text = _("Prepare this CT")
        self.ui.prepareProgressBar.visible = False
        with slicer.util.tryWithErrorDisplay(_("Preparation failed."), waitCursor=False):
            if exitCode != 0:
                rest = bytes(proc.readAllStandardError().data()).decode("utf-8", "replace")
                raise RuntimeError(f"rayemb prepare exited with status {exitCode}: {rest.strip()[-500:]}")
            self.ui.readinessLabel.text = self.logic.usePrepared(self._parameterNode, outDir)
        self._checkCanApply()

    def _showResults(self) -> None:
        outputs = self.logic.outputs
        if outputs.get("table") is not None:
            self.ui.resultsTableView.setMRMLTableNode(outputs["table"])
        self.logic.showOutputs(self._parameterNode)


#
# RayEmbRegistrationLogic
#


class RayEmbRegistrationLogic(ScriptedLoadableModuleLogic):
    """Parameter node → plain values → library calls; the scene in and out through ``RayEmbRegistrationLib.mrml``.

    Can be used without the widget (``slicer.util.getModuleLogic("RayEmbRegistration")``); every long method
    accepts the Lib's ``progress(fraction, message)`` and ``cancel() -> bool`` callbacks (``progress.py``). One
    ``pipeline.Registrar`` is kept while the CT stays the same, so re-runs reuse its templates and renderer.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastResult = None
        self.lastDetection = None
        self.outputs: dict = {}
        self._registrar = None

    def getParameterNode(self):
        return RayEmbRegistrationParameterNode(super().getParameterNode())

    # --- dependencies ---------------------------------------------------------------------------------------
    @staticmethod
    def _requirements() -> list:
        """``(requirement, no_deps)`` of the library's one list, minus what this module never installs."""
        from packaging.requirements import Requirement

        from RayEmbRegistrationLib.resources import requirements

        skip = {s.lower() for s in SKIP_PACKAGES}
        return [(r, nd) for r, nd in requirements() if Requirement(r).name.lower() not in skip]

    @classmethod
    def missingDependencies(cls) -> list:
        """The requirements (pip syntax) that are not installed (torch is handled separately)."""
        import importlib.metadata

        from packaging.requirements import Requirement

        missing = []
        for req, _noDeps in cls._requirements():
            try:
                importlib.metadata.version(Requirement(req).name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(req)
        return missing

    @staticmethod
    def torchAvailable() -> bool:
        import importlib.util

        return importlib.util.find_spec("torch") is not None

    def installDependencies(self, askConfirmation: bool = True) -> bool:
        """Install PyTorch (through the PyTorch extension when present) and the other packages into Slicer's
        Python. Returns False when the user declines. Never installs SKIP_PACKAGES."""
        missing = self.missingDependencies()
        needTorch = not self.torchAvailable()
        if not missing and not needTorch:
            return True
        if askConfirmation:
            what = (["PyTorch"] if needTorch else []) + missing
            if not slicer.util.confirmOkCancelDisplay(
                _("RayEmbRegistration needs these Python packages, which will be downloaded and installed now "
                  "(this can take several minutes):\n\n{packages}").format(packages=", ".join(what)),
                windowTitle=_("Install Python packages"),
            ):
                return False
        if needTorch:
            self._installTorch()
        if missing:
            noDeps = {r for r, nd in self._requirements() if nd}
            self._pipInstall([m for m in missing if m not in noDeps], [m for m in missing if m in noDeps])
        still = self.missingDependencies()
        if still or not self.torchAvailable():
            raise RuntimeError(
                f"Could not install: {', '.join(still + ([] if self.torchAvailable() else ['torch']))}. "
                "See the Python console for pip's messages."
            )
        return True

    @staticmethod
    def _installTorch() -> None:
        try:
            import PyTorchUtils  # the PyTorch extension: picks the right CUDA/CPU build for this computer
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(askConfirmation=False)
                if torch is None:
                    raise RuntimeError("PyTorch installation failed (PyTorch extension).")
            return
        slicer.util.pip_install("torch")

    @staticmethod
    def _pipInstall(withDeps: list, noDeps: list) -> None:
        pydeps = None
        for name in ("packaging", "pydeps"):  # slicer.packaging (Slicer >= 5.12; "pydeps" in 5.11 previews)
            try:
                pydeps = importlib.import_module(f"slicer.{name}")
                break
            except ImportError:
                continue
        if pydeps is not None and hasattr(pydeps, "pip_ensure") and withDeps:
            from packaging.requirements import Requirement

            pydeps.pip_ensure([Requirement(r) for r in withDeps], skip_packages=SKIP_PACKAGES, requester="RayEmbRegistration")
        elif withDeps:
            slicer.util.pip_install(withDeps)
        for pkg in noDeps:
            slicer.util.pip_install(["--no-deps", pkg])

    # --- parameter node → plain values ----------------------------------------------------------------------
    @staticmethod
    def geometryOverrides(p) -> dict:
        """Geometry fields of the GUI in the sidecar format (0 / "at centre" = not given)."""
        d = {}
        if p.sourceToDetectorMM > 0:
            d["source_to_detector_mm"] = float(p.sourceToDetectorMM)
        if p.pixelSpacingU > 0 and p.pixelSpacingV > 0:
            d["pixel_spacing_mm"] = (float(p.pixelSpacingU), float(p.pixelSpacingV))
        if not p.principalPointAtCentre:
            d["principal_point_px"] = (float(p.principalPointU), float(p.principalPointV))
        return d

    def missingGeometry(self, p) -> list:
        """Names of the geometry fields that are neither in the GUI nor on the X-ray node."""
        from RayEmbRegistrationLib import mrml

        names = {"source_to_detector_mm": _("SDD"), "pixel_spacing_mm": _("pixel spacing")}
        return [names[k] for k in mrml.missing_geometry(p.xrayVolume, self.geometryOverrides(p))]

    def xrayFromNode(self, node, p):
        """X-ray volume node + GUI geometry → ``xray.XRayImage`` (line-integral pixels), with the C-arm angles of
        its DICOM file when Slicer's DICOM module loaded it."""
        import dataclasses

        from RayEmbRegistrationLib import mrml

        xr = mrml.volume_node_to_xray(node, self.geometryOverrides(p), raw_intensity=bool(p.logTransform))
        if xr.carm is None:
            carm = self._dicomCarmAngles(node)
            if carm is not None:
                xr = dataclasses.replace(xr, carm=carm)
        return xr

    @staticmethod
    def _dicomCarmAngles(node):
        """C-arm angles from the DICOM file behind ``node`` (Slicer's DICOM database), or None."""
        uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
        db = getattr(slicer, "dicomDatabase", None)
        if not uids or db is None:
            return None
        path = db.fileForInstance(uids[0])
        if not path:
            return None
        from RayEmbRegistrationLib.inputs.xray_dicom import read_carm_angles

        try:
            return read_carm_angles(path)
        except ValueError as exc:
            logging.warning(f"RayEmbRegistration: no C-arm angles from {path}: {exc}")
            return None

    @staticmethod
    def fiducialsFromNode(node):
        if node is None:
            return None
        from RayEmbRegistrationLib import mrml

        fids = mrml.markups_node_to_fiducials(node)
        return fids if len(fids) else None

    def modelPath(self, p) -> Optional[str]:
        """The network weights chosen in the GUI (None = the library's default, the bundled general network)."""
        if p.modelSource == "file":
            path = str(p.modelFile)
            if not path or path == "." or not os.path.isfile(path):
                raise ValueError(f"Model file not found: '{path}'. Choose a .safetensors file or select 'bundled'.")
            return path
        if p.modelSource == "fine-tuned":
            path = str(p.finetunedModelFile)
            if not path or path == "." or not os.path.isfile(path):
                raise ValueError("No fine-tuned model for this scene yet: press 'Fine-tune on this CT' first.")
            return path
        return None

    def registrationOptions(self, p):
        """GUI options → ``options.RegistrationOptions``. ``resolution`` is the finest refinement grid and
        ``iterations`` the Adam iterations of the coarsest level (``RefineOptions.schedule``, as the CLI's)."""
        from RayEmbRegistrationLib.options import DetectionOptions, RefineOptions, RegistrationOptions

        return RegistrationOptions(
            device=p.device,
            model_path=self.modelPath(p),
            detection=DetectionOptions(auto_bone_points=bool(p.autoBonePoints)),
            refine=RefineOptions.schedule(int(p.resolution), int(p.iterations), enabled=bool(p.refine)),
        )

    def registrar(self, p):
        """The ``pipeline.Registrar`` for ``p.ctVolume`` with the GUI's options (kept while the CT is unchanged)."""
        from RayEmbRegistrationLib import mrml
        from RayEmbRegistrationLib.registration.pipeline import Registrar
        from RayEmbRegistrationLib.training.prepare import use_prepared

        if not p.ctVolume or not p.xrayVolume:
            raise ValueError("Select a CT volume and an X-ray volume.")
        ct = mrml.volume_node_to_ct(p.ctVolume)
        options = self.registrationOptions(p)
        if p.modelSource == "prepared":  # the folder's weights and templates, checked to belong to this CT
            options = use_prepared(options, ct, str(p.preparedFolder) if str(p.preparedFolder) not in ("", ".") else "auto")
        if self._registrar is None or not self._registrar.matches(ct):
            self._registrar = Registrar(ct, options)
        self._registrar.options = options
        return self._registrar

    def prepareCommand(self, p):
        """``(program, arguments, environment, outDir)`` of ``rayemb prepare`` for ``p.ctVolume``: the CT is written
        to a temporary NIfTI (the node is not modified), the folder goes to the prepared-CT cache under the CT's
        content hash (so ``--prepared auto`` and this module find it again)."""
        import shutil

        from RayEmbRegistrationLib import mrml
        from RayEmbRegistrationLib.training.prepare import prepare_command, prepared_cache_dir
        from RayEmbRegistrationLib.detection.templates import ct_hash
        from RayEmbRegistrationLib.inputs.volume import save_ct

        if not p.ctVolume:
            raise ValueError("Select the CT volume to prepare.")
        ct = mrml.volume_node_to_ct(p.ctVolume)
        ctPath = os.path.join(slicer.app.temporaryPath, f"RayEmbPrepare-{ct_hash(ct)[:16]}.nii.gz")
        save_ct(ct, ctPath)
        outDir = str(prepared_cache_dir() / ct_hash(ct)[:16])
        base = self.modelPath(p) if p.modelSource in ("file",) else None
        python = shutil.which("PythonSlicer") or sys.executable
        cmd = prepare_command(ctPath, outDir, p.prepareMinutes, python, model=base, device=p.device)
        env = {"PYTHONPATH": os.pathsep.join([MODULE_DIR] + [x for x in [os.environ.get("PYTHONPATH")] if x])}
        return cmd[0], cmd[1:], env, outDir

    def usePrepared(self, p, outDir: str) -> str:
        """Select the prepared folder ``outDir`` for registrations of this CT; returns its readiness summary."""
        from RayEmbRegistrationLib.training.prepare import PreparedCT

        prep = PreparedCT.open(outDir)
        p.preparedFolder = pathlib.Path(outDir)
        p.modelSource = "prepared"
        return "\n".join(prep.summary_lines())

    # --- actions (usable without the GUI) -------------------------------------------------------------------
    def register(self, p, progress=None, cancel=None):
        """Register ``p.xrayVolume`` to ``p.ctVolume``; writes/updates the output nodes; returns the result."""
        from RayEmbRegistrationLib import mrml

        registrar = self.registrar(p)
        result = registrar.register(self.xrayFromNode(p.xrayVolume, p), self.fiducialsFromNode(p.fiducials),
                                    progress=progress, cancel=cancel)
        self.outputs = mrml.write_registration_outputs(slicer.mrmlScene, p.xrayVolume, result.for_display())
        self.lastResult, self.lastDetection = result, None
        logging.info(f"RayEmbRegistration: {result.headline()} ({result.timings_s.get('total', 0.0):.1f} s)")
        return result

    def detect(self, p, progress=None, cancel=None):
        """Detect the fiducials in the X-ray: 2D points on the X-ray + a table; heatmaps kept for display."""
        from RayEmbRegistrationLib import mrml

        fids = self.fiducialsFromNode(p.fiducials)
        if fids is None:
            raise ValueError("Detect landmarks needs 3D landmarks: select or place a point list in the CT.")
        registrar = self.registrar(p)
        det = registrar.detect(self.xrayFromNode(p.xrayVolume, p), fids, heatmaps=True, progress=progress, cancel=cancel)
        self.outputs = mrml.write_detection_outputs(slicer.mrmlScene, p.xrayVolume, det)
        self.lastDetection = det
        return det

    def finetune(self, p, progress=None, cancel=None, seconds: float = 300.0) -> str:
        """Fine-tune the network on ``p.ctVolume`` (``seconds`` of training); selects the new weights."""
        from RayEmbRegistrationLib import mrml
        from RayEmbRegistrationLib.device import resolve_device
        from RayEmbRegistrationLib.training.finetune import finetune

        if not p.ctVolume:
            raise ValueError("Select the CT volume to fine-tune on.")
        ct = mrml.volume_node_to_ct(p.ctVolume)
        safeName = "".join(c if c.isalnum() or c in "-_" else "_" for c in p.ctVolume.GetName()) or "ct"
        outDir = os.path.join(slicer.app.cachePath, "RayEmbRegistration", "finetuned", safeName)
        os.makedirs(outDir, exist_ok=True)
        base = self.modelPath(p) if p.modelSource != "fine-tuned" else None
        report = finetune(ct, outDir, model_path=base, seconds=seconds, device=resolve_device(p.device), bar=False,
                          log=logging.info, progress=progress, cancel=cancel)
        p.finetunedModelFile = pathlib.Path(report["finetuned_model"])
        p.modelSource = "fine-tuned"
        return str(p.finetunedModelFile)

    # --- display --------------------------------------------------------------------------------------------
    @staticmethod
    def summary(result) -> str:
        """The status text after a registration: the headline (verdict first), its total time, the verdict's
        reasons and the warnings."""
        text = f"{result.headline()}; {result.timings_s.get('total', float('nan')):.1f} s"
        reasons = list(result.verdict.reasons) if result.verdict is not None else []
        return "\n".join([text] + reasons + list(result.warnings or []))

    #: status-label colour per verdict (rejected results are shown, but never look like a success)
    VERDICT_COLORS = {"accepted": "#1a7f37", "uncertain": "#9a6700", "rejected": "#cf222e"}

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

        heatmaps = getattr(self.lastDetection, "heatmaps", None)
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
    """Folder with the shared test bodies (``mrml_checks.py``): the source tree's Testing/Python, or the copy
    CMake installs next to the module."""
    for cand in (
        os.path.join(os.path.dirname(MODULE_DIR), "Testing", "Python"),
        os.path.join(MODULE_DIR, "RayEmbRegistrationTesting"),
    ):
        if os.path.isfile(os.path.join(cand, "mrml_checks.py")):
            return cand
    return None


class RayEmbRegistrationTest(ScriptedLoadableModuleTest):
    """Runs the same test bodies as the headless pytest suite (``Testing/Python/mrml_checks.py``) inside Slicer,
    on Slicer's own MRML classes, plus a check of the Logic's input conversions.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_RayEmbRegistrationMRMLAdapters()
        self.setUp()
        self.test_RayEmbRegistrationLogicInputs()

    def _sampleCT(self):
        from RayEmbRegistrationLib import mrml

        path = resourcePath("SampleData/pelvis_abdomen_totalseg_3mm.nii.gz")
        node = slicer.util.loadVolume(path)
        return node, mrml.volume_node_to_ct(node)

    def test_RayEmbRegistrationMRMLAdapters(self):
        """The shared mrml checks, each on a fresh (cleared) Slicer scene."""
        testing = _testingDir()
        if testing is None:
            self.delayDisplay("Testing/Python/mrml_checks.py not found: skipping the shared MRML checks.")
            return
        if testing not in sys.path:
            sys.path.insert(0, testing)
        import tempfile

        import mrml_checks
        from slicer_app import SlicerApp

        from RayEmbRegistrationLib import mrml

        class SceneApp:
            """slicer.mrmlScene with the interface mrml_checks expects (see its docstring)."""

            scene = slicer.mrmlScene
            nodes = SlicerApp.nodes
            snapshot = SlicerApp.snapshot

            def save_mrb(self, path):
                mrml.save_scene_mrb(self.scene, path)

            def fresh(self):
                return SlicerApp()

        _, ct = self._sampleCT()
        cameras = mrml_checks.make_cameras(ct)
        drr = mrml_checks.make_drr(ct, cameras)
        for check in mrml_checks.all_checks():
            slicer.mrmlScene.Clear()
            self.delayDisplay(check.__name__, 10)
            with tempfile.TemporaryDirectory() as tmp:
                mrml_checks.run_check(check, app=SceneApp(), ct=ct, cameras=cameras, drr=drr, tmp_path=pathlib.Path(tmp))
        self.delayDisplay("MRML adapter checks passed")

    def test_RayEmbRegistrationLogicInputs(self):
        """The Logic reads the CT, the X-ray with the GUI geometry, and the fiducials from nodes."""
        import numpy as np

        from RayEmbRegistrationLib import mrml
        from RayEmbRegistrationLib.geometry.camera import Intrinsics

        ctNode, ct = self._sampleCT()
        K = Intrinsics(1000.0, (0.5, 0.5), 64, 48)
        pixels = np.random.default_rng(0).random((48, 64)).astype(np.float32)
        xrNode = mrml.xray_to_volume_node(slicer.mrmlScene, pixels, K, "X-ray")
        fidNode = mrml.fiducials_to_markups_node(slicer.mrmlScene, ["a", "b"], ct.center_ras + np.eye(3)[:2] * 10, "F")
        logic = RayEmbRegistrationLogic()
        p = logic.getParameterNode()
        p.ctVolume, p.xrayVolume, p.fiducials = ctNode, xrNode, fidNode
        self.assertEqual(logic.missingGeometry(p), [])
        p.sourceToDetectorMM = 900.0
        xr = logic.xrayFromNode(xrNode, p)
        self.assertEqual(xr.intrinsics.source_to_detector_mm, 900.0)
        np.testing.assert_array_equal(xr.pixels, pixels)
        fids = logic.fiducialsFromNode(fidNode)
        self.assertEqual(list(fids.labels), ["a", "b"])
        self.delayDisplay("Logic input checks passed")
