"""The fixed-landmark baseline (Grupp et al., IPCAI 2020; the RayEmb paper's "Fixed Landmark" column): a heatmap
network for one fixed set of named 3D landmarks of one CT, then PnP + RANSAC on its detections.

Owns: ``train_fixed_landmarks`` (the network, trained on DRRs of the CT rendered on the fly), ``detect_fixed``
(heatmaps → one 2D point and a confidence per landmark) and ``fixed_landmark_pose`` (PnP on them).

What makes it the comparison RayEmb is about: the network knows exactly these landmarks — it must see them to place
them, and a view that hides a few leaves PnP with too few points — whereas RayEmb detects any point asked for.

Network: the project's U-Net (``detection.model``) with one output channel per landmark, its encoder initialised
from the bundled ray-embedding network; a landmark's heatmap is the softmax of its channel over the pixels. Training
images: DRRs of the CT (``rendering.render.DRRRenderer``, bone multiplier U(1, 10) as RayEmb's training) at poses
drawn half from ``RAYEMB_SAMPLER`` about the bone centre and half from ``CLINICAL_SAMPLER`` about random bone voxels;
loss: cross-entropy of each visible landmark's heatmap against a Gaussian (σ = 1.5 px at the network's grid) at its
projection. Frames: world = the CT's RAS; pixels (u, v) of the X-ray as given.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

__all__ = ["train_fixed_landmarks", "load_fixed_landmarks", "detect_fixed", "fixed_landmark_pose",
           "FIXED_MIN_CONFIDENCE", "FIXED_RANSAC_SHARE"]

#: a landmark is used for PnP when its heatmap's peak holds at least this share of the probability (80× a flat
#: 128² map); RANSAC's inlier threshold is ``FIXED_RANSAC_SHARE`` of the image width. Measured on the DeepFluoro-layout
#: fixture (8 frames, a 5-minute network): 0.005 / 8 % gives a PnP pose on 4 of 8 frames, 0.02 / 3 % on 1 of 8
#: (``benchmarks/deepfluoro_fixture.py``; docs/results.md)
FIXED_MIN_CONFIDENCE = 0.005
FIXED_RANSAC_SHARE = 0.08


def _heatmap_model(n: int, size: int):
    from .model import ModelConfig, build_model

    return build_model(ModelConfig(dim=int(n), image_size=int(size), extra={"kind": "fixed-landmark heatmaps"}))


def train_fixed_landmarks(ct, fiducials, out_path, minutes: float = 5.0, size: int = 128, batch: int = 4,
                          lr: float = 1e-3, seed: int = 0, progress=None, cancel=None, log=print) -> Path:
    """Train the heatmap network of ``fiducials`` (``Fiducials``: names + RAS) on DRRs of ``ct`` for ``minutes``;
    write ``out_path`` (``.safetensors`` + config + sha256, the landmark names in its metadata). Returns the path."""
    import torch

    from ..geometry.camera import Camera, Intrinsics
    from ..geometry.carm import CLINICAL_SAMPLER, RAYEMB_SAMPLER
    from ..progress import check_cancel
    from ..rendering.render import DRRRenderer
    from .model import init_from_bundled, normalize_image, save_model
    from .templates import ct_isocenter

    if len(fiducials) < 6:
        raise ValueError(f"the fixed-landmark baseline needs at least 6 landmarks for PnP, got {len(fiducials)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    names, pts = list(fiducials.labels), np.asarray(fiducials.ras, float)
    model = _heatmap_model(len(names), size)
    n_init = init_from_bundled(model)
    intr = Intrinsics.deepfluoro(size)
    renderer = DRRRenderer(ct, intr)
    centre = ct_isocenter(ct)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    t0, budget, step, losses = time.time(), 60.0 * float(minutes), 0, []
    log(f"fixed-landmark network: {len(names)} landmarks, {size}² input, {n_init} tensors from the bundled network")
    model.train()
    while time.time() - t0 < budget:
        check_cancel(cancel, "fixed-landmark training")
        imgs, targets, masks = [], [], []
        for _ in range(batch):
            if rng.random() < 0.5:
                T = RAYEMB_SAMPLER.sample(1, centre, rng)[0]
            else:
                T = CLINICAL_SAMPLER.sample(1, ct.sample_bone_points(1, rng)[0], rng)[0]
            renderer.set_bone_multiplier(float(rng.uniform(1.0, 10.0)))
            with torch.no_grad():
                img = renderer.render_numpy(T).astype(np.float32)
            uv = Camera(intr, T).project(pts)
            vis = np.isfinite(uv).all(1) & (uv[:, 0] >= 0) & (uv[:, 0] <= size - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= size - 1)
            uv = np.nan_to_num(uv)
            g = torch.exp(-((xx[None] - torch.tensor(uv[:, 0], dtype=torch.float32)[:, None, None]) ** 2
                            + (yy[None] - torch.tensor(uv[:, 1], dtype=torch.float32)[:, None, None]) ** 2) / (2 * 1.5 ** 2))
            g = g / g.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
            imgs.append(img)
            targets.append(g)
            masks.append(torch.tensor(vis, dtype=torch.float32))
        x = normalize_image(np.stack(imgs), size=size)
        logits = model(x)  # (B, L, S, S)
        logp = torch.log_softmax(logits.flatten(2), dim=-1)
        tgt = torch.stack(targets).flatten(2)
        m = torch.stack(masks)
        loss = -(tgt * logp).sum(-1)
        loss = (loss * m).sum() / m.sum().clamp_min(1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if progress:
            progress(min(1.0, (time.time() - t0) / budget), f"fixed landmarks: step {step}, loss {np.mean(losses[-20:]):.2f}")
    model.eval()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, out_path, metadata={"landmarks": names, "steps": step, "minutes": float(minutes),
                                          "loss_last20": float(np.mean(losses[-20:])) if losses else math.nan})
    log(f"fixed-landmark network: {step} steps in {(time.time() - t0) / 60:.1f} min, loss {np.mean(losses[-20:]):.2f}"
        f" → {out_path}")
    return out_path


def load_fixed_landmarks(path):
    """``(model, landmark names)`` of a network written by ``train_fixed_landmarks`` (sha256 checked)."""
    import json

    from .model import _sidecars, load_model

    model = load_model(path)
    meta = json.loads(_sidecars(Path(path))[0].read_text())
    names = (meta.get("metadata") or {}).get("landmarks")
    if not names or len(names) != model.config.dim:
        raise ValueError(f"{path} is not a fixed-landmark network (no landmark names matching its {model.config.dim} "
                         "channels); train one with 'rayemb train-landmarks'")
    return model, list(names)


def detect_fixed(model, xray) -> tuple[np.ndarray, np.ndarray]:
    """Each landmark's peak on ``xray`` → ``(uv (L, 2) in the X-ray's pixels, confidence (L,))`` (the softmax mass
    at the peak)."""
    import torch

    S = model.config.image_size
    with torch.no_grad():
        logits = model.embed(xray.pixels)[0]  # (L, S, S)
        p = torch.softmax(logits.flatten(1), dim=-1)
    conf, idx = p.max(dim=-1)
    uv_s = np.stack([(idx % S).numpy(), (idx // S).numpy()], axis=1).astype(np.float64)
    uv = xray.intrinsics.resized(S, S).scale_pixels(uv_s, xray.intrinsics)
    return uv, conf.numpy().astype(np.float64)


def fixed_landmark_pose(model, names, xray, fiducials, min_confidence: float = FIXED_MIN_CONFIDENCE,
                        threshold_px: float | None = None, seed: int = 0):
    """The initial pose from the fixed landmarks: detections of the landmarks of ``fiducials`` named like the
    network's, those with a confident peak, PnP + RANSAC (``registration.pose.solve_pnp``). → ``PnPResult``;
    raises ``pose.PoseError`` (a ``ValueError``) with fewer than 6 usable landmarks."""
    from ..registration.pose import PoseError, solve_pnp

    uv, conf = detect_fixed(model, xray)
    index = {n: i for i, n in enumerate(fiducials.labels)}
    use = [(i, index[n]) for i, n in enumerate(names) if n in index and conf[i] >= min_confidence]
    if len(use) < 6:
        raise PoseError(f"fixed landmarks: {len(use)} of {len(names)} detected with confidence ≥ {min_confidence}; "
                        "PnP needs 6")
    det = np.array([uv[i] for i, _ in use])
    pts = np.array([fiducials.ras[j] for _, j in use])
    thr = threshold_px if threshold_px is not None else FIXED_RANSAC_SHARE * xray.intrinsics.width
    return solve_pnp(pts, det, xray.intrinsics, threshold_px=thr, iterations=2000, seed=seed)
