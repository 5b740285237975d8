"""The settings of a registration, as one tree of frozen dataclasses with every default written once.

Owns: the one options tree of a registration and the refinement schedule rule.

``RegistrationOptions`` (``device``, ``model_path``, ``seed`` and the ``detection`` / ``pnp`` /
``refine`` sub-trees) and the refinement schedule rule.

The CLI's defaults and help, the Slicer module and the library all read these classes, so a default lives here
and nowhere else. Imports neither torch nor OpenCV (the Slicer module builds options before its dependencies
are installed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DetectionOptions", "PnPOptions", "RefineOptions", "RegistrationOptions", "schedule_levels",
           "schedule_iterations", "schedule_lrs", "DEFAULT_FINEST_PX", "DEFAULT_COARSE_ITERATIONS"]

#: the refinement schedule's defaults: finest grid (longer side, px) and Adam iterations of the coarsest level
DEFAULT_FINEST_PX = 96
DEFAULT_COARSE_ITERATIONS = 60


def schedule_levels(finest_px: int = DEFAULT_FINEST_PX) -> tuple[int, ...]:
    """Coarse-to-fine grid sizes for a finest grid of ``finest_px``: 32, ``min(64, finest)``, finest (no duplicates).

    The 32-px level with a large step gives the refinement its capture range (starts ~15° and ~90 mm off: 75 %
    success instead of 25 % for the earlier (64, 96) schedule, ``benchmarks/bench_refine_capture.py``).
    """
    finest = max(16, int(finest_px))
    levels: list[int] = []
    for s in (min(32, finest), min(64, finest), finest):
        if s not in levels:
            levels.append(s)
    return tuple(levels)


def schedule_iterations(coarse_iterations: int, n_levels: int) -> tuple[int, ...]:
    """Adam iterations per level: ``n, 2n/3, n/3`` (first ``n_levels``)."""
    n = max(1, int(coarse_iterations))
    return (n, max(1, round(2 * n / 3)), max(1, round(n / 3)))[: int(n_levels)]


def schedule_lrs(n_levels: int) -> tuple[float, ...]:
    """Adam step sizes (mm) for ``n_levels`` levels: 8 mm at the coarsest, 1 mm at the finest, 3 mm in between
    (one level alone: 3 mm)."""
    n = int(n_levels)
    if n <= 1:
        return (3.0,) * max(n, 0)
    return (8.0,) + (3.0,) * (n - 2) + (1.0,)


_LEVELS = schedule_levels()


@dataclass(frozen=True)
class DetectionOptions:
    """Landmark detection.

    Attributes:
        n_templates: template views per CT (``templates.inference_template_angles``).
        auto_bone_points: also detect automatically sampled bone points (HU ≥ 350) of the CT.
        n_bone_candidates: how many bone points are detected (paper: 10 000); None → 10 000 on CUDA, 2 000 on CPU.
        n_bone_keep: how many of them, the most confident, go to PnP (paper: 600).
        min_confidence: detections at or below this confidence are not used for PnP.
        fast: ``LandmarkDetector.detect(fast=True)`` (coarse map, full resolution around 4 peaks). Off: 5 of 10
            instead of 6 of 10 simulated pelvis cases (docs/pipeline.md).
    """

    n_templates: int = 4
    auto_bone_points: bool = True
    n_bone_candidates: int | None = None
    n_bone_keep: int = 600
    min_confidence: float = 0.0
    fast: bool = False

    def bone_candidates(self, device: str) -> int:
        """``n_bone_candidates``, or its device default."""
        if self.n_bone_candidates is not None:
            return int(self.n_bone_candidates)
        return 10_000 if str(device).startswith("cuda") else 2_000


@dataclass(frozen=True)
class PnPOptions:
    """PnP + RANSAC (``pose.solve_pnp_hypotheses``).

    Attributes:
        ransac_threshold_px: RANSAC inlier threshold in pixels of the X-ray as given (its full resolution).
        ransac_iterations, ransac_confidence: RANSAC settings.
        hypotheses: how many plausible PnP poses (sequential RANSAC, disjoint consensus sets) compete; with more
            than one and refinement on, each gets the coarsest refinement level and the most similar one wins.
            Default 1: on 10 simulated pelvis cases, 3 hypotheses changed no outcome and cost ~6 s.
    """

    ransac_threshold_px: float = 10.0
    ransac_iterations: int = 10_000
    ransac_confidence: float = 0.9999
    hypotheses: int = 1


@dataclass(frozen=True)
class RefineOptions:
    """Intensity refinement (``refine.Refiner``).

    Attributes:
        enabled: run the refinement after the initial pose.
        depth_search: before refining a PnP pose, slide the CT along the viewing ray of its centre and also refine
            from the most similar depth (``Refiner.refine_with_depth_search``): PnP from noisy detections is
            weakest in depth. Not applied to a caller's start pose.
        levels: coarse-to-fine grid sizes (longer side, px), coarse first (``schedule_levels``).
        iterations: Adam iterations per level (one number for all levels, or one per level).
        lr_mm: initial learning rate per level (mm of translation / of arc at the bone radius); cosine decay to
            10 % within each level.
        voxel_mm: the CT is resampled to this voxel size for rendering (None: as loaded).
        samples_per_voxel: ray samples per voxel along the longest CT axis.
        patch_fraction: local-NCC tile size as a fraction of the level's width.
        bone_multiplier: bone attenuation multiplier of the DRRs (X-rays show bone more than a physical DRR).
        backend: DRR backend (``"nanodrr"``, ``"diffdrr"``).
    """

    enabled: bool = True
    depth_search: bool = True
    levels: tuple[int, ...] = _LEVELS
    iterations: int | tuple[int, ...] = schedule_iterations(DEFAULT_COARSE_ITERATIONS, len(_LEVELS))
    lr_mm: tuple[float, ...] = schedule_lrs(len(_LEVELS))
    voxel_mm: float | None = 3.0
    samples_per_voxel: float = 1.0
    patch_fraction: float = 0.1
    bone_multiplier: float = 2.5
    backend: str = "nanodrr"

    @classmethod
    def schedule(cls, finest_px: int = DEFAULT_FINEST_PX, coarse_iterations: int = DEFAULT_COARSE_ITERATIONS,
                 **other: Any) -> "RefineOptions":
        """The standard schedule for a finest grid and a coarse iteration count (the Slicer module's two fields)."""
        levels = schedule_levels(finest_px)
        return cls(levels=levels, iterations=schedule_iterations(coarse_iterations, len(levels)),
                   lr_mm=schedule_lrs(len(levels)), **other)

    def with_levels(self, levels=None, iterations=None) -> "RefineOptions":
        """These options with other ``levels`` (learning rates by ``schedule_lrs``) and/or ``iterations``
        (the CLI's ``--refine-levels`` / ``--refine-iterations``)."""
        o = self
        if levels:
            o = dataclasses.replace(o, levels=tuple(int(x) for x in levels), lr_mm=schedule_lrs(len(levels)))
        if iterations:
            o = dataclasses.replace(o, iterations=tuple(int(x) for x in iterations))
        return o

    def per_level(self, value, n: int) -> list:
        """``value`` (a number or a sequence) as a list of ``n`` (the last entry repeated, or truncated)."""
        if isinstance(value, (int, float)):
            return [value] * n
        value = list(value)
        if len(value) < n:
            value += [value[-1]] * (n - len(value))
        return value[:n]


@dataclass(frozen=True)
class RegistrationOptions:
    """Settings of ``pipeline.Registrar`` (defaults = the CLI's defaults).

    Attributes:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``.
        model_path: network weights (``.safetensors``); None = the bundled general model.
        seed: seed of every random choice (bone points, RANSAC).
        detection, pnp, refine: the stages' settings.
    """

    device: str = "auto"
    model_path: str | None = None
    seed: int = 0
    detection: DetectionOptions = field(default_factory=DetectionOptions)
    pnp: PnPOptions = field(default_factory=PnPOptions)
    refine: RefineOptions = field(default_factory=RefineOptions)

    def replace(self, **changes: Any) -> "RegistrationOptions":
        """A copy with ``changes``; ``detection={...}`` / ``pnp={...}`` / ``refine={...}`` dicts change fields of
        that sub-tree."""
        for name in ("detection", "pnp", "refine"):
            if isinstance(changes.get(name), dict):
                changes[name] = dataclasses.replace(getattr(self, name), **changes[name])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (tuples as lists)."""
        def plain(v):
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return list(v) if isinstance(v, tuple) else v

        return plain(dataclasses.asdict(self))
