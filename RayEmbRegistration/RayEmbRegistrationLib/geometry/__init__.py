"""Geometry: the one camera model and the C-arm.

Owns: nothing itself; ``camera`` (the pinhole camera, the one geometry parser, every renderer's convention) and
``carm`` (DICOM C-arm angles, pose samplers). World = the CT's RAS mm, OpenCV camera, pixels (u, v) at integer
centres; no module outside this folder flips an axis.
"""
