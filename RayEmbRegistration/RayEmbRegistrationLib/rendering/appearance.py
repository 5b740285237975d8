"""X-ray appearance families: the same CT and pose rendered the ways different simulators (and C-arms) would show it.

Owns: the appearance families (``FAMILIES``), their random parameters, and ``simulate`` — one X-ray of a CT at a
known pose in a chosen family, with the parameters it drew.

Registration must not depend on the look of this project's own DRRs, and no figure may be judged on them alone:
``rayemb evaluate --appearance`` draws its X-rays from these families, and training can draw from them too.

* ``project``: ``simulate.simulate_xray`` — a nanodrr DRR with this project's HU → attenuation mapping, a random bone
  multiplier, quantum and detector noise, heel effect and gamma.
* ``diffdrr``: DiffDRR's own renderer and its own HU → density mapping (``diffdrr_hu_to_density``, as
  ``diffdrr.data.transform_hu_to_density``:
  air raised to the lowest soft-tissue HU, soft tissue linear in HU, bone × a multiplier, normalised to [0, 1]),
  then blur, gamma and additive noise — the look of DiffPose / xvr training images.
* ``physics``: a physics-based simulator in the spirit of DeepDRR: HU → mass density (piecewise linear, water = 1
  g/cm³) and material fractions (adipose, soft tissue, bone); one line integral of mass density per material; a
  tungsten tube spectrum at 70–120 kVp with extra aluminium filtration (SpekPy tables); energy-dependent mass
  attenuation (XrayDB tables, ICRU-44 tissues); an energy-integrating CsI detector; scatter as a scatter-to-primary
  ratio times a broad blur of the primary; steel wires and screws that are not in the CT; circular or rectangular
  collimation; Poisson quantum noise, detector blur and electronic noise; then the C-arm's display processing: log,
  window/level, gamma and unsharp-mask edge enhancement.
* ``mixed``: each image from one of the three, chosen at random.

Every family returns what ``inputs.xray.load_xray`` delivers: (H, W) float32 in line-integral form (bone bright),
``image[v, u]`` with pixel centres at integer (u, v) — so a point lands where ``Camera.project`` puts it in every
family (``Testing/Python/test_appearance.py``). The parameters are drawn from ``rng`` and returned as a plain dict
(JSON-ready) so that each image can be recorded and re-made: ``simulate(..., params=recorded)`` skips the draw.

Sources: Unberath et al., *DeepDRR*, MICCAI 2018 (material decomposition, spectra, scatter, noise); Poludniowski et
al., *SpekPy v2.0*, Med. Phys. 2021 (spectra); Elam et al. via XrayDB (attenuation); ICRU Report 44 (tissue
compositions); Gopalakrishnan & Golland, *DiffDRR*, 2022. The tables are ``Resources/Physics/xray_physics.npz``
(``scripts/make_physics_tables.py``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..geometry.camera import Intrinsics
from ..inputs.volume import CTVolume

__all__ = ["FAMILIES", "simulate", "case_in_family", "draw_params", "physics_tables", "hu_to_mass_density", "material_fractions",
           "diffdrr_hu_to_density", "MATERIALS", "collimated_field"]

FAMILIES = ("project", "diffdrr", "physics", "mixed")
#: the materials of the physics family, in the order of ``material_fractions``
MATERIALS = ("adipose", "soft_tissue", "bone")
_IRON_DENSITY, _CSI_DENSITY, _AL_DENSITY = 7.87, 4.51, 2.699  # g/cm³


# ---------------------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------------------


def draw_params(family: str, rng: np.random.Generator) -> dict:
    """Random parameters of one image of ``family`` (plain floats, ints, strings and lists)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown appearance family {family!r}; choose one of {', '.join(FAMILIES)}")
    if family == "mixed":
        chosen = str(rng.choice(FAMILIES[:3]))
        return {"family": "mixed", "chosen": chosen, **{k: v for k, v in draw_params(chosen, rng).items()
                                                         if k != "family"}}
    if family == "project":
        return {"family": "project", "seed": int(rng.integers(2**31))}
    if family == "diffdrr":
        return {"family": "diffdrr", "bone_multiplier": float(rng.uniform(1.5, 3.5)),
                "blur_px": float(rng.uniform(0.0, 1.2)), "gamma": float(rng.uniform(0.7, 1.4)),
                "noise": float(rng.uniform(0.002, 0.02)), "seed": int(rng.integers(2**31))}
    collimator = str(rng.choice(["none", "circle", "rectangle"], p=[0.3, 0.35, 0.35]))
    metal = []
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.4, 0.3, 0.2, 0.1]))):
        screw = bool(rng.random() < 0.5)
        metal.append({"kind": "screw" if screw else "wire",
                      "radius_mm": float(rng.uniform(2.0, 3.5) if screw else rng.uniform(0.4, 1.0)),
                      "length_mm": float(rng.uniform(25, 60) if screw else rng.uniform(60, 200)),
                      "centre": [float(x) for x in rng.uniform(0.15, 0.85, 2)],  # image fractions (u, v)
                      "depth": float(rng.uniform(-0.3, 0.3)),  # fraction of the bone's depth extent about its centre
                      "direction": [float(x) for x in _unit(rng.normal(size=3))]})
    return {
        "family": "physics",
        "kvp": float(rng.uniform(70, 120)),
        "al_mm": float(rng.uniform(0.0, 3.0)),
        "photons": float(10 ** rng.uniform(5.0, 6.5)),  # per pixel, unattenuated (1 mm² pixels, fluoroscopic dose)
        "spr": float(rng.uniform(0.1, 1.0)),  # scatter-to-primary ratio at the image centre
        "scatter_sigma": float(rng.uniform(0.08, 0.25)),  # scatter kernel σ as a share of the image width
        "detector_blur_px": float(rng.uniform(0.3, 1.2)),
        "electronic_noise": float(rng.uniform(2.0, 20.0)),  # photons-equivalent per pixel
        "collimator": collimator,
        "collimator_size": float(rng.uniform(0.75, 0.98)),
        "collimator_offset": [float(x) for x in rng.uniform(-0.05, 0.05, 2)],
        "metal": metal,
        "window_low_pct": float(rng.uniform(0.0, 3.0)),
        "window_high_pct": float(rng.uniform(97.0, 100.0)),
        "gamma": float(rng.uniform(0.6, 1.6)),
        "unsharp_amount": float(rng.uniform(0.0, 1.5)),
        "unsharp_sigma_px": float(rng.uniform(1.5, 6.0)),
        "seed": int(rng.integers(2**31)),
    }


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / max(float(np.linalg.norm(v)), 1e-12)


# ---------------------------------------------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------------------------------------------


def simulate(ct: CTVolume, intrinsics: Intrinsics, camera_from_world, family: str = "project",
             rng: np.random.Generator | int | None = 0, params: dict | None = None,
             backend: str | None = None) -> tuple[np.ndarray, dict]:
    """One X-ray of ``ct`` at ``camera_from_world`` (4, 4) in ``family`` → ``(image (H, W) float32, params)``.

    ``params`` (a dict returned before) re-makes that image; otherwise they are drawn from ``rng``. ``backend``
    overrides the ray marcher of the ``physics`` family (default ``"nanodrr"``; ``"joseph"`` is ~20× faster on a
    CPU) and of ``diffdrr`` (default ``"diffdrr"``, DiffDRR's own).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    params = dict(params) if params is not None else draw_params(family, rng)
    kind = params.get("chosen", params["family"])
    T = np.asarray(camera_from_world, dtype=np.float64)
    if kind == "project":
        from .simulate import simulate_xray

        record: dict = {}
        img = simulate_xray(ct, intrinsics, T, rng=np.random.default_rng(params["seed"]), record=record)
        return img, {**params, **record}
    if kind == "diffdrr":
        return _diffdrr(ct, intrinsics, T, params, backend or "diffdrr"), params
    if kind == "physics":
        return _physics(ct, intrinsics, T, params, backend or "nanodrr"), params
    raise ValueError(f"unknown appearance family {kind!r}; choose one of {', '.join(FAMILIES)}")


def case_in_family(ct: CTVolume, intrinsics: Intrinsics, camera_from_world, family: str, project: tuple[np.ndarray, dict],
                   key, overrides: dict | None = None) -> tuple[np.ndarray, dict]:
    """A benchmark case's X-ray in ``family``: ``project`` (the project family's image and parameters, made as the
    benchmark always makes it, so that its random stream — the poses and starts that follow — is the same in every
    family), or a new image whose parameters are drawn from ``default_rng(key)`` (``key`` e.g. ``(seed, 7, case)``)
    with ``overrides`` fixed. → ``(image, params)``."""
    if family == "project":
        return project
    params = draw_params(family, np.random.default_rng([int(k) for k in key]))
    params.update({k: v for k, v in (overrides or {}).items() if k in params})
    return simulate(ct, intrinsics, camera_from_world, family, params=params)


# ---------------------------------------------------------------------------------------------------------------
# diffdrr
# ---------------------------------------------------------------------------------------------------------------


def diffdrr_hu_to_density(hu, bone_multiplier: float):
    """DiffDRR's HU → density convention (``diffdrr.data.transform_hu_to_density`` of diffdrr 0.6.1, whose module
    cannot be imported here: it needs pandas): air (HU ≤ −800) takes the lowest soft-tissue value, soft tissue
    (−800 < HU ≤ 350) its HU, bone its HU × ``bone_multiplier``; then shifted and scaled to [0, 1]. ``hu`` a torch
    tensor. ``Testing/Python/test_appearance.py`` checks it against DiffDRR's own function, read from its source."""
    import torch

    v = hu.to(torch.float32)
    air, soft, bone = v <= -800, (v > -800) & (v <= 350), v > 350
    if not bool(soft.any()):
        raise ValueError("the diffdrr appearance needs soft-tissue voxels (-800 < HU <= 350) in the CT: DiffDRR's "
                         "HU -> density mapping sets air to the lowest soft-tissue value")
    d = torch.where(air, v[soft].min(), torch.where(bone, v * bone_multiplier, v))
    d = d - d.min()
    return (d / d.max()).to(hu.dtype)


def _diffdrr(ct, intrinsics, T, p, backend) -> np.ndarray:
    from .render import DRRRenderer

    r = DRRRenderer(ct, intrinsics, backend=backend, bone_multiplier=p["bone_multiplier"],
                    attenuation=diffdrr_hu_to_density)
    img = np.clip(r.render_numpy(T).astype(np.float64), 0, None)
    img /= max(float(img.max()), 1e-9)
    img = _gauss(img, p["blur_px"])
    img = np.clip(img, 0, None) ** p["gamma"]
    noise = np.random.default_rng(p["seed"]).normal(0, p["noise"], img.shape)
    return np.clip(img + noise, 0, None).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# physics
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def physics_tables() -> dict[str, np.ndarray]:
    """``Resources/Physics/xray_physics.npz``: ``energy_kev`` (E,), ``kvp`` (K,), ``spectra`` (K, E),
    ``materials`` (M,), ``mu_over_rho`` (M, E) in cm²/g."""
    from ..resources import PHYSICS_TABLES

    if not PHYSICS_TABLES.is_file():
        raise FileNotFoundError(f"{PHYSICS_TABLES} is missing: the physics appearance needs the bundled tables "
                                "(scripts/make_physics_tables.py writes them)")
    with np.load(PHYSICS_TABLES) as z:
        return {k: z[k] for k in z.files}


def hu_to_mass_density(hu):
    """Mass density (g/cm³) from HU, NumPy or torch: ``1 + HU/1000`` up to water (air 0.001), ``1 + 0.00055·HU``
    above it (cortical bone at ~1900 HU → 2.05), after the piecewise-linear calibrations of Schneider et al. (Phys.
    Med. Biol. 2000)."""
    import torch

    lib = torch if isinstance(hu, torch.Tensor) else np
    low = lib.clip(1.0 + hu / 1000.0, 0.001, None)
    high = 1.0 + 0.00055 * hu
    return lib.where(hu <= 0, low, high)


def material_fractions(hu):
    """Mass fractions (adipose, soft tissue, bone) from HU, each the shape of ``hu``, summing to 1: adipose for
    −200 < HU ≤ −100 and fading to soft tissue at 0 HU; lung and air count as (thin) soft tissue; bone grows
    linearly from 100 to 1,500 HU (trabecular bone is a mixture of marrow and mineral)."""
    import torch

    lib = torch if isinstance(hu, torch.Tensor) else np
    fat = lib.where(hu > -200, lib.clip(-hu / 100.0, 0.0, 1.0), lib.zeros_like(hu))
    bone = lib.clip((hu - 100.0) / 1400.0, 0.0, 1.0)
    soft = 1.0 - fat - bone
    return fat, soft, bone


def _material_density(index: int):
    def density(hu, _bone_multiplier):
        return hu_to_mass_density(hu) * material_fractions(hu)[index] / 10.0  # g/cm³ → g/cm² per mm of ray

    return density


_RENDERERS: list = []  # [(ct, backend, [renderer per material])], the last few CTs


def _material_renderers(ct: CTVolume, intrinsics: Intrinsics, backend: str) -> list:
    """One renderer per material of ``ct``, kept for the last 4 (CT, backend) pairs: building a volume costs more
    than rendering it, and a training stream renders the same CT thousands of times."""
    from .render import DRRRenderer

    for c, b, rs in _RENDERERS:
        if c is ct and b == backend:
            if rs[0].intrinsics != intrinsics:
                for r in rs:
                    r.set_intrinsics(intrinsics)
            return rs
    rs = [DRRRenderer(ct, intrinsics, backend=backend, attenuation=_material_density(i)) for i in range(len(MATERIALS))]
    _RENDERERS.insert(0, (ct, backend, rs))
    del _RENDERERS[4:]
    return rs


def _physics(ct, intrinsics, T, p, backend) -> np.ndarray:
    tables = physics_tables()
    E = tables["energy_kev"].astype(np.float64)
    names = list(tables["materials"])
    mu = {n: tables["mu_over_rho"][i].astype(np.float64) for i, n in enumerate(names)}
    rng = np.random.default_rng(p["seed"])
    W, H = intrinsics.size

    # line integrals of mass density per material (g/cm²), then the metal that is not in the CT
    L = [np.clip(r.render_numpy(T), 0, None).astype(np.float64) for r in _material_renderers(ct, intrinsics, backend)]
    L_iron = _metal_path_g_cm2(ct, intrinsics, T, p["metal"])

    # spectrum: the table's two neighbouring kVp rows blended, cut at the kVp, with extra aluminium
    kv = tables["kvp"].astype(np.float64)
    j = int(np.clip(np.searchsorted(kv, p["kvp"]) - 1, 0, len(kv) - 2))
    w = float(np.clip((p["kvp"] - kv[j]) / (kv[j + 1] - kv[j]), 0, 1))
    phi = (1 - w) * tables["spectra"][j] + w * tables["spectra"][j + 1]
    phi = phi * (E <= p["kvp"]) * np.exp(-mu["aluminium"] * _AL_DENSITY * p["al_mm"] / 10.0)
    eta = 1.0 - np.exp(-mu["csi"] * _CSI_DENSITY * 0.06)  # 600 µm CsI
    weight = phi * E * eta  # energy-integrating detector
    keep = weight > weight.max() * 1e-4
    weight, E_mu = weight[keep] / weight[keep].sum(), {n: m[keep] for n, m in mu.items()}

    # primary transmission, summed over energies in chunks of pixels
    path = np.stack([L[0].ravel(), L[1].ravel(), L[2].ravel(), L_iron.ravel()], axis=1)  # (N, 4)
    mus = np.stack([E_mu["adipose"], E_mu["soft_tissue"], E_mu["bone"], E_mu["iron"]], axis=0)  # (4, E)
    primary = np.empty(path.shape[0])
    for s in range(0, path.shape[0], 16384):
        primary[s:s + 16384] = np.exp(-path[s:s + 16384] @ mus) @ weight
    primary = primary.reshape(H, W)

    # scatter: a share of the primary spread by a broad kernel; collimation; quantum and detector noise
    scatter = p["spr"] * _gauss(primary, p["scatter_sigma"] * W)
    field = _collimator_mask(p, W, H)
    signal = primary * field + scatter * np.maximum(field, 0.05)
    counts = rng.poisson(np.clip(signal, 0, None) * p["photons"]) / p["photons"]  # quantum noise
    counts = _gauss(counts, p["detector_blur_px"]) + rng.normal(0, p["electronic_noise"] / p["photons"], counts.shape)

    # display processing: log, window/level on the collimated field, gamma, unsharp mask (bone bright)
    ell = -np.log(np.clip(counts, 1.0 / p["photons"], None))
    lo, hi = np.percentile(ell[field >= 1.0], [p["window_low_pct"], p["window_high_pct"]])  # auto-window on the field
    img = np.clip((ell - lo) / max(hi - lo, 1e-6), 0, 1) ** p["gamma"]
    img = img + p["unsharp_amount"] * (img - _gauss(img, p["unsharp_sigma_px"]))
    return np.clip(img, 0, 1.5).astype(np.float32)


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.05:
        return img
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma, mode="nearest")


def collimated_field(params: dict, W: int, H: int) -> np.ndarray:
    """(H, W) bool: True inside the open field of a physics-family image with ``params`` (all True without a
    collimator, or for another family) — the truth ``registration/xray_mask`` is measured against."""
    if params.get("collimator", "none") == "none":
        return np.ones((H, W), dtype=bool)
    return _collimator_mask(params, W, H) >= 1.0


def _collimator_mask(p: dict, W: int, H: int) -> np.ndarray:
    """Transmission of the collimator: 1 in the field, 0.001 behind the lead."""
    if p["collimator"] == "none":
        return np.ones((H, W))
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    cu = (W - 1) / 2 + p["collimator_offset"][0] * W
    cv = (H - 1) / 2 + p["collimator_offset"][1] * H
    s = p["collimator_size"]
    if p["collimator"] == "circle":
        inside = (u - cu) ** 2 + (v - cv) ** 2 <= (0.5 * s * max(W, H)) ** 2
    else:
        inside = (np.abs(u - cu) <= 0.5 * s * W) & (np.abs(v - cv) <= 0.5 * s * H)
    return np.where(inside, 1.0, 0.001)


def _metal_path_g_cm2(ct: CTVolume, intrinsics: Intrinsics, T, metal: list[dict]) -> np.ndarray:
    """Mass path length (g/cm²) of steel cylinders through each pixel's ray. Each object is placed in the camera
    frame: its centre on the ray of the image point ``centre`` at the bone's depth (plus ``depth`` × the bone's depth
    extent), its axis along ``direction``; the chord of a ray through a finite cylinder is computed exactly."""
    W, H = intrinsics.size
    out = np.zeros(H * W)
    if not metal:
        return out.reshape(H, W)
    rays = _unit_rows(intrinsics.detector_points_camera().reshape(-1, 3))  # (N, 3) directions from the source
    bone = ct.sample_bone_points(2000, np.random.default_rng(0))
    z = (np.c_[bone, np.ones(len(bone))] @ np.asarray(T).T)[:, 2]
    z_mid, z_ext = float(np.median(z)), float(np.percentile(z, 95) - np.percentile(z, 5))
    Kinv = np.linalg.inv(intrinsics.K)
    for m in metal:
        px = np.array([m["centre"][0] * (W - 1), m["centre"][1] * (H - 1), 1.0])
        d0 = Kinv @ px
        c = d0 / d0[2] * (z_mid + m["depth"] * z_ext)
        a = _unit(m["direction"])
        out += _chord(rays, c, a, m["radius_mm"], m["length_mm"]) * _IRON_DENSITY / 10.0
    return out.reshape(H, W)


def _unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _chord(d: np.ndarray, c: np.ndarray, a: np.ndarray, r: float, length: float) -> np.ndarray:
    """Length (mm) of each ray ``t·d`` (t ≥ 0, unit ``d`` (N, 3)) inside the cylinder of axis ``a`` through ``c``,
    radius ``r``, length ``length`` centred at ``c``."""
    # ray point x(t) = t d; radial part relative to the axis: (x - c) - ((x - c)·a) a
    dp = d - (d @ a)[:, None] * a  # (N, 3)
    cp = -c + (c @ a) * a  # -(c radial)
    A = np.einsum("ij,ij->i", dp, dp)
    B = 2 * dp @ cp
    C = float(cp @ cp) - r * r
    disc = B * B - 4 * A * C
    parallel = A <= 1e-12  # a ray along the axis: inside the radius everywhere, or nowhere
    ok = np.where(parallel, C <= 0, disc > 0)
    sq = np.sqrt(np.where(ok & ~parallel, disc, 0.0))
    safe_a = np.where(parallel, 1.0, A)
    t0 = np.where(parallel, -np.inf, (-B - sq) / (2 * safe_a))
    t1 = np.where(parallel, np.inf, (-B + sq) / (2 * safe_a))
    # clip to the caps: s(t) = (t d - c)·a within ±length/2
    da, ca = d @ a, float(c @ a)
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = np.where(np.abs(da) > 1e-12, (ca - length / 2) / da, -np.inf)
        tb = np.where(np.abs(da) > 1e-12, (ca + length / 2) / da, np.inf)
    lo_cap, hi_cap = np.minimum(ta, tb), np.maximum(ta, tb)
    inside_axis = np.abs(da) > 1e-12
    lo_cap = np.where(inside_axis, lo_cap, np.where(abs(ca) <= length / 2, -np.inf, np.inf))
    hi_cap = np.where(inside_axis, hi_cap, np.where(abs(ca) <= length / 2, np.inf, -np.inf))
    lo, hi = np.maximum(np.maximum(t0, lo_cap), 0.0), np.minimum(t1, hi_cap)
    return np.where(ok, np.clip(hi - lo, 0.0, None), 0.0)
