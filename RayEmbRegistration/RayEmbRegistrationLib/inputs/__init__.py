"""Inputs: the CT, the X-ray and the fiducials, read into the one world frame.

Owns: nothing itself; ``volume`` (CT volumes: HU, ijk→RAS, NIfTI / NRRD / DICOM), ``xray`` (X-ray pixels as line
integrals + their ``camera.Intrinsics``, the geometry sidecar), ``xray_dicom`` (DICOM X-rays, C-arm angles),
``fiducials`` (3D points: Slicer markups JSON, fcsv, CSV; LPS → RAS). Details: ``docs/io.md``.
"""
