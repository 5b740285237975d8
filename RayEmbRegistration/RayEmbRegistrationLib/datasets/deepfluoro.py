"""DeepFluoro (Grupp et al., IPCAI 2020), read from the user's own copy of its HDF5 file, in this project's one frame
and camera.

Owns: ``DeepFluoroFile`` (open, check the layout, list specimens), ``DeepFluoroSpecimen`` (CT, 3D landmarks,
frames), ``DeepFluoroFrame`` (the preprocessed X-ray, its ground-truth camera, its 2D landmarks) and
``deepfluoro_camera`` — the one place that converts DeepFluoro's projection geometry.

The data (6 cadaver specimens, 366 hip fluoroscopy frames, CC BY-NC 4.0) is never bundled or downloaded: it is read
only from a path the user gives. Layout (``ipcai_2020_full_res_data.h5``; the DeepFluoroLabeling README,
"Data Organization in HDF5 Files"; read, not copied, from it and the DiffPose / DiffDRR-Datasets loaders)::

    proj-params/{intrinsic (3×3), extrinsic (4×4), num-rows, num-cols, pixel-row-spacing, pixel-col-spacing}
    <specimen>/vol/{pixels [k][j][i], spacing, origin, dir-mat}       CT in LPS mm (HU)
    <specimen>/vol-landmarks/<name>                                    3D landmark, LPS mm
    <specimen>/projections/<NNN>/image/pixels                          raw detector intensity (bone dark)
    <specimen>/projections/<NNN>/gt-poses/cam-to-pelvis-vol            4×4: C-arm world → pelvis volume (LPS)
    <specimen>/projections/<NNN>/gt-landmarks/<name>                   2D landmark (column, row), raw image
    <specimen>/projections/<NNN>/rot-180-for-up                        1: rotate 180° for the patient to be up

Conversion (``deepfluoro_camera``), written down once:

* A LPS point ``X`` lands on raw pixel ``(u, v)`` = dehomogenised ``K · E · G⁻¹ · X`` with ``K`` = intrinsic,
  ``E`` = extrinsic (C-arm world → projective frame), ``G`` = cam-to-pelvis-vol; pixel centres at integers (the
  DeepFluoro README's projective frame: origin at the source, x along columns, y along rows, z toward the source,
  focal lengths negative). Landmarks use the same formula (DiffPose's evaluation).
* World = RAS: ``X_lps = LPS_TO_RAS · X_ras``.
* The 3×4 matrix is made to give positive depth, and if its left 3×3 block then has a negative determinant the
  stored image is a mirror of any pinhole view (radiographs are stored as seen from behind the detector): the
  image is flipped left–right — an image operation, never a camera one (``camera.py``) — and the pixel map with
  it. In the DeepFluoro file this is the case: ``K`` has both focal lengths negative and E, G are rigid.
* Preprocessing as the public loaders do it, each as the same pixel map on image, camera and 2D landmarks: the
  180° rotation where ``rot-180-for-up`` is set; a border of 50 px at 1536 columns (scaled with the image) cut
  off (the collimator's edge); raw intensity → line integral ``log(I0) − log(I)`` (``xray.intensity_to_line_integral``).
  The final 3×4 matrix is split once (RQ) into ``Intrinsics`` and a rigid ``camera_from_world``.
* xreg's registration code shifts the pelvis-volume frame by −0.5 mm ("texture indexing") before rendering; the
  ground-truth landmarks and the public Python loaders do not, and neither does this reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry.camera import Camera, Intrinsics
from ..inputs.fiducials import Fiducials
from ..inputs.volume import LPS_TO_RAS, CTVolume
from ..inputs.xray import XRayImage, intensity_to_line_integral

__all__ = ["DeepFluoroError", "DeepFluoroFile", "DeepFluoroSpecimen", "DeepFluoroFrame", "deepfluoro_camera",
           "SPECIMENS", "LANDMARKS", "BORDER_PX_AT_1536", "open_deepfluoro"]

#: specimen numbers 1–6 of the DeepFluoro papers (and DiffPose / DiffDRR-Datasets) → their group names
SPECIMENS = ("17-1882", "18-1109", "18-0725", "18-2799", "18-2800", "17-1905")
#: the 14 anatomical landmarks (femoral heads, greater sciatic notches, inferior obturator foramina, medial obturator
#: foramina, superior and inferior pubic symphyses, anterior superior iliac spines; left / right)
LANDMARKS = ("FH-l", "FH-r", "GSN-l", "GSN-r", "IOF-l", "IOF-r", "MOF-l", "MOF-r", "SPS-l", "SPS-r", "IPS-l",
             "IPS-r", "ASIS-l", "ASIS-r")
#: the collimator border cut from each side of a full-resolution (1536-column) frame, as the public loaders do
BORDER_PX_AT_1536 = 50

_REQUIRED_PROJ_PARAMS = ("intrinsic", "extrinsic", "num-rows", "num-cols", "pixel-row-spacing", "pixel-col-spacing")


class DeepFluoroError(ValueError):
    """The file is not (or not entirely) in DeepFluoro's layout; the message names what is missing."""


def deepfluoro_camera(K, E, G, width: int, height: int, scene_point_ras, rot180: bool = False, border_px: int = 0,
                      pixel_spacing_mm: tuple[float, float] | None = None):
    """The ground-truth camera of a DeepFluoro frame and the pixel map that goes with it.

    Args:
        K: (3, 3) ``proj-params/intrinsic``; E: (4, 4) ``proj-params/extrinsic``; G: (4, 4) ``cam-to-pelvis-vol``.
        width, height: the stored image's columns and rows.
        scene_point_ras: (3,) a point the X-ray sees (the CT's centre): it fixes which side of the source is in front.
        rot180: the frame's ``rot-180-for-up`` flag; border_px: columns/rows cut from each side.
        pixel_spacing_mm: (Δu, Δv) of the detector (``pixel-col-spacing``, ``pixel-row-spacing``).
    Returns:
        ``(camera, A, mirrored)``: ``Camera`` (RAS world; the preprocessed image's size), ``A`` (3, 3) the map of
        homogeneous raw pixels onto preprocessed pixels, and whether the image is flipped left–right.
    """
    from scipy.linalg import rq

    P = np.asarray(K, float) @ np.asarray(E, float)[:3] @ np.linalg.inv(np.asarray(G, float)) @ LPS_TO_RAS
    W, H = int(width), int(height)
    # positive depth for the points in front (DeepFluoro's projective frame has them at negative z)
    if P[2] @ np.r_[np.asarray(scene_point_ras, float).reshape(3), 1.0] < 0:
        P = -P
    A = np.eye(3)
    mirrored = bool(np.linalg.det(P[:, :3]) < 0)
    if mirrored:
        A = np.array([[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ A
    if rot180:
        A = np.array([[-1.0, 0.0, W - 1.0], [0.0, -1.0, H - 1.0], [0.0, 0.0, 1.0]]) @ A
    b = int(border_px)
    A = np.array([[1.0, 0.0, -b], [0.0, 1.0, -b], [0.0, 0.0, 1.0]]) @ A
    P = A @ P
    Kc, R = rq(P[:, :3])
    S = np.diag(np.sign(np.diag(Kc)))  # make K's diagonal positive (S² = I)
    Kc, R = Kc @ S, S @ R
    scale = Kc[2, 2]
    Kc = Kc / scale
    t = np.linalg.solve(Kc, P[:, 3] / scale)
    if np.linalg.det(R) < 0:
        raise DeepFluoroError("the projection geometry could not be made a proper pinhole camera (check the file's "
                              "intrinsic and extrinsic matrices)")
    if abs(Kc[0, 1]) > 1e-6 * abs(Kc[0, 0]):
        raise DeepFluoroError(f"the intrinsic matrix has a skew ({Kc[0, 1]:.3g}); this camera model has none")
    du, dv = pixel_spacing_mm if pixel_spacing_mm is not None else (1.0, 1.0)
    sdd = float(Kc[0, 0] * du)
    intr = Intrinsics(sdd, (float(du), float(sdd / Kc[1, 1])), W - 2 * b, H - 2 * b,
                      (float(Kc[0, 2]), float(Kc[1, 2])))
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return Camera(intr, T), A, mirrored


def _matrix4(a, what: str) -> np.ndarray:
    """A 4×4 homogeneous matrix from a stored 4×4 or 3×4 one (the last row [0, 0, 0, 1] added)."""
    m = np.asarray(a, dtype=float)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise DeepFluoroError(f"{what} has shape {m.shape}; expected a 4×4 (or 3×4) rigid transform")
    return m


def _apply_pixel_map(A: np.ndarray, uv: np.ndarray) -> np.ndarray:
    h = np.c_[np.asarray(uv, float).reshape(-1, 2), np.ones(len(np.asarray(uv).reshape(-1, 2)))] @ A.T
    return h[:, :2] / h[:, 2:3]


@dataclass
class DeepFluoroFrame:
    """One fluoroscopy frame, preprocessed, with its ground truth in this project's frame and camera.

    Attributes:
        specimen, frame_id: e.g. ``"17-1882"``, ``"005"``.
        xray: the preprocessed frame (line integrals; its intrinsics are the ground-truth camera's).
        truth: the ground-truth ``Camera`` (``camera_from_world`` in the CT's RAS).
        landmarks_2d: name → (u, v) of the file's 2D landmarks in ``xray``'s pixels (may lie outside the image).
        pixel_map: (3, 3) raw pixel → preprocessed pixel; mirrored / rotated: what was done to the image.
    """

    specimen: str
    frame_id: str
    xray: XRayImage = field(repr=False)
    truth: Camera = field(repr=False)
    landmarks_2d: dict = field(default_factory=dict, repr=False)
    pixel_map: np.ndarray = field(default_factory=lambda: np.eye(3), repr=False)
    mirrored: bool = False
    rotated: bool = False

    def visible_landmarks(self) -> list[str]:
        """Names of the file's 2D landmarks that lie on the preprocessed image."""
        W, H = self.xray.intrinsics.size
        return [n for n, (u, v) in self.landmarks_2d.items() if -0.5 <= u <= W - 0.5 and -0.5 <= v <= H - 0.5]


class DeepFluoroSpecimen:
    """One specimen of an open ``DeepFluoroFile``: its CT, 3D landmarks and frames."""

    def __init__(self, file: "DeepFluoroFile", specimen_id: str) -> None:
        self.file, self.id = file, specimen_id
        self._g = file.h5[specimen_id]
        for key in ("vol/pixels", "vol/spacing", "vol/origin", "vol-landmarks", "projections"):
            if key not in self._g:
                raise DeepFluoroError(f"{file.path}: specimen {specimen_id} has no '{key}' (expected DeepFluoro's "
                                      "full-resolution layout: vol/{pixels,spacing,origin}, vol-landmarks, projections)")

    @property
    def number(self) -> int | None:
        """The specimen's number 1–6 in the papers' order, or None for another group name."""
        return SPECIMENS.index(self.id) + 1 if self.id in SPECIMENS else None

    def ct(self) -> CTVolume:
        """The CT in RAS (HU as stored)."""
        g = self._g["vol"]
        hu = np.asarray(g["pixels"][()], dtype=np.float32).transpose(2, 1, 0)  # [k][j][i] → [i, j, k]
        spacing = np.asarray(g["spacing"][()], float).reshape(-1)
        origin = np.asarray(g["origin"][()], float).reshape(-1)
        D = np.asarray(g["dir-mat"][()], float).reshape(3, 3) if "dir-mat" in g else np.eye(3)
        if spacing.size != 3 or origin.size != 3:
            raise DeepFluoroError(f"{self.file.path}: {self.id}/vol spacing {spacing} / origin {origin} must hold 3 values")
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = D * spacing[None, :]
        ijk_to_lps[:3, 3] = origin
        return CTVolume(hu, LPS_TO_RAS @ ijk_to_lps, f"DeepFluoro {self.id}")

    def centre_ras(self) -> np.ndarray:
        """(3,) the CT's centre in RAS, from its header (the voxels are not read)."""
        g = self._g["vol"]
        shape = np.asarray(g["pixels"].shape[::-1], float)  # (i, j, k)
        spacing = np.asarray(g["spacing"][()], float).reshape(-1)
        origin = np.asarray(g["origin"][()], float).reshape(-1)
        D = np.asarray(g["dir-mat"][()], float).reshape(3, 3) if "dir-mat" in g else np.eye(3)
        lps = origin + D @ (spacing * (shape - 1) / 2.0)
        return (LPS_TO_RAS[:3, :3] @ lps)

    def landmarks(self) -> Fiducials:
        """The 3D landmarks (RAS), in the file's order, the 14 known ones first."""
        g = self._g["vol-landmarks"]
        names = [n for n in LANDMARKS if n in g] + sorted(n for n in g if n not in LANDMARKS)
        lps = np.array([np.asarray(g[n][()], float).reshape(-1)[:3] for n in names]).reshape(-1, 3)
        ras = (np.c_[lps, np.ones(len(lps))] @ LPS_TO_RAS.T)[:, :3]
        return Fiducials(names, ras)

    def frame_ids(self) -> list[str]:
        return sorted(self._g["projections"].keys())

    def frame(self, frame_id: str | int) -> DeepFluoroFrame:
        """Frame ``frame_id`` (``"005"`` or 5), preprocessed (see the module docstring)."""
        fid = f"{int(frame_id):03d}" if isinstance(frame_id, (int, np.integer)) or str(frame_id).isdigit() else str(frame_id)
        projs = self._g["projections"]
        if fid not in projs and fid.isdigit():  # frames named without zero padding
            fid = next((k for k in projs if k.isdigit() and int(k) == int(fid)), fid)
        if fid not in projs:
            raise DeepFluoroError(f"{self.file.path}: specimen {self.id} has no frame {fid!r} (frames "
                                  f"{', '.join(self.frame_ids()[:5])}…)")
        g = projs[fid]
        for key in ("image/pixels", "gt-poses/cam-to-pelvis-vol"):
            if key not in g:
                raise DeepFluoroError(f"{self.file.path}: {self.id}/projections/{fid} has no '{key}'")
        raw = np.asarray(g["image/pixels"][()], dtype=np.float64)
        if raw.ndim == 3 and 1 in (raw.shape[0], raw.shape[-1]):  # a (1, H, W) or (H, W, 1) image
            raw = raw.reshape(raw.shape[1:] if raw.shape[0] == 1 else raw.shape[:-1])
        if raw.ndim != 2:
            raise DeepFluoroError(f"{self.file.path}: {self.id}/{fid}/image/pixels has shape {raw.shape}; expected a "
                                  "2D frame")
        pp = self.file.proj_params
        H, W = raw.shape
        if (W, H) != (pp["num-cols"], pp["num-rows"]):
            raise DeepFluoroError(f"{self.file.path}: {self.id}/{fid} is {W}×{H} px but proj-params say "
                                  f"{pp['num-cols']}×{pp['num-rows']}")
        rot = bool(np.asarray(g["rot-180-for-up"][()]).reshape(-1)[0]) if "rot-180-for-up" in g else False
        border = int(round(BORDER_PX_AT_1536 * W / 1536.0))
        G = _matrix4(g["gt-poses/cam-to-pelvis-vol"][()], f"{self.id}/{fid}/gt-poses/cam-to-pelvis-vol")
        cam, A, mirrored = deepfluoro_camera(pp["intrinsic"], pp["extrinsic"], G, W, H, self.centre_ras(), rot, border,
                                             (pp["pixel-col-spacing"], pp["pixel-row-spacing"]))
        img = raw[:, ::-1] if mirrored else raw
        img = img[::-1, ::-1] if rot else img
        img = img[border:H - border, border:W - border] if border else img
        notes: list[str] = []
        pixels = intensity_to_line_integral(img, f"DeepFluoro {self.id}/{fid}", notes).astype(np.float32)
        notes = [*(["mirrored left-right (stored as seen from behind the detector)"] if mirrored else []),
                 *(["rotated 180° (rot-180-for-up)"] if rot else []),
                 *([f"{border}-px collimator border removed"] if border else []), *notes]
        xray = XRayImage(pixels, cam.intrinsics, f"DeepFluoro {self.id}/{fid}", None,
                         {"source": f"{self.file.path}:{self.id}/projections/{fid}", "format": "deepfluoro-h5",
                          "intensity": "log-transformed: log(I0) - log(I)", "notes": notes})
        lm = {}
        if "gt-landmarks" in g:
            for name in g["gt-landmarks"]:
                uv = np.asarray(g["gt-landmarks"][name][()], float).reshape(-1)[:2]
                lm[name] = tuple(_apply_pixel_map(A, uv)[0])
        return DeepFluoroFrame(self.id, fid, xray, cam, lm, A, mirrored, rot)


class DeepFluoroFile:
    """An open DeepFluoro HDF5 file (read-only). Use as a context manager, or call ``close()``."""

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise DeepFluoroError(f"DeepFluoro file not found: {self.path}. Give the path of your copy of "
                                  "ipcai_2020_full_res_data.h5 (it is never downloaded by this project).")
        try:
            self.h5 = h5py.File(str(self.path), "r")
        except OSError as exc:
            raise DeepFluoroError(f"{self.path} is not a readable HDF5 file: {exc}") from exc
        if "land-names" in self.h5 and "proj-params" not in self.h5:
            self.close()
            raise DeepFluoroError(
                f"{self.path} is one of DeepFluoro's preprocessed 2D files (land-names, projs, segs, lands): it holds "
                "no CT and no poses, so nothing can be registered with it. Give ipcai_2020_full_res_data.h5.")
        if "proj-params" not in self.h5:
            self.close()
            raise DeepFluoroError(f"{self.path} has no 'proj-params' group: not DeepFluoro's full-resolution layout "
                                  "(proj-params, and one group per specimen with vol, vol-landmarks, projections).")
        g = self.h5["proj-params"]
        missing = [k for k in _REQUIRED_PROJ_PARAMS if k not in g]
        if missing:
            self.close()
            raise DeepFluoroError(f"{self.path}: proj-params lacks {', '.join(missing)}")
        self.proj_params = {
            "intrinsic": np.asarray(g["intrinsic"][()], float).reshape(3, 3),
            "extrinsic": _matrix4(g["extrinsic"][()], "proj-params/extrinsic"),
            "num-rows": int(np.asarray(g["num-rows"][()]).reshape(-1)[0]),
            "num-cols": int(np.asarray(g["num-cols"][()]).reshape(-1)[0]),
            "pixel-row-spacing": float(np.asarray(g["pixel-row-spacing"][()]).reshape(-1)[0]),
            "pixel-col-spacing": float(np.asarray(g["pixel-col-spacing"][()]).reshape(-1)[0]),
        }
        groups = [k for k in self.h5 if k != "proj-params" and hasattr(self.h5[k], "keys")
                  and ("projections" in self.h5[k] or "vol" in self.h5[k])]
        self.specimens = [k for k in SPECIMENS if k in groups] + sorted(k for k in groups if k not in SPECIMENS)
        if not self.specimens:
            self.close()
            raise DeepFluoroError(f"{self.path} holds proj-params but no specimen group (e.g. 17-1882)")

    def specimen(self, which: str | int) -> DeepFluoroSpecimen:
        """A specimen by group name (``"17-1882"``) or number 1–6."""
        if isinstance(which, (int, np.integer)) or str(which).isdigit() and len(str(which)) == 1:
            n = int(which)
            if not 1 <= n <= len(SPECIMENS):
                raise DeepFluoroError(f"specimen {n}: DeepFluoro numbers its specimens 1–6")
            which = SPECIMENS[n - 1]
        if which not in self.specimens:
            raise DeepFluoroError(f"{self.path} has no specimen {which!r} (it has {', '.join(self.specimens)})")
        return DeepFluoroSpecimen(self, str(which))

    def close(self) -> None:
        h5 = getattr(self, "h5", None)
        if h5 is not None:
            h5.close()

    def __enter__(self) -> "DeepFluoroFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_deepfluoro(path: str | Path) -> DeepFluoroFile:
    return DeepFluoroFile(path)
