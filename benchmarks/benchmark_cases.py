"""The benchmarks' shared set-up: the command-line flags that pick ``rayemb evaluate``'s benchmark cases (CT, poses,
network or prepared folder, count, size, seed) and the registrar, refiner, simulator and evaluation points for
them (and ``emit_row``, how they record a case) — so that ``view_pass.py`` and ``competitor_margin.py`` iterate exactly ``evaluate.simulated_cases``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Intrinsics  # noqa: E402
from RayEmbRegistrationLib.evaluate import EVAL_POINTS, EVAL_POINTS_SEED  # noqa: E402
from RayEmbRegistrationLib.options import RegistrationOptions  # noqa: E402
from RayEmbRegistrationLib.registration.pipeline import Registrar  # noqa: E402
from RayEmbRegistrationLib.rendering.render import DRRRenderer  # noqa: E402
from RayEmbRegistrationLib.resources import SAMPLE_CT  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402


def add_case_args(p: argparse.ArgumentParser, poses: str) -> None:
    """``--ct --poses --model --prepared --n --size --seed`` (``poses``: the default of ``--poses``)."""
    p.add_argument("--ct", default=str(SAMPLE_CT))
    p.add_argument("--poses", choices=("rayemb", "clinical"), default=poses)
    p.add_argument("--model", default=None, help="weights (default: the bundled general network)")
    p.add_argument("--prepared", default=None, help="a prepared-CT folder (its weights and templates)")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)


def case_setup(a, **changes):
    """``(ct, intrinsics, registrar, refiner, simulator, eval_points)`` for the parsed ``add_case_args`` flags ``a``;
    ``changes`` (sections of ``RegistrationOptions.replace``) adjust the registrar's options."""
    ct = load_ct(a.ct)
    intr = Intrinsics.deepfluoro(a.size)
    opts = RegistrationOptions(**({"model_path": a.model} if a.model else {}))
    if a.prepared:
        from RayEmbRegistrationLib.training.prepare import use_prepared

        opts = use_prepared(opts, ct, a.prepared)
    registrar = Registrar(ct, opts.replace(**changes) if changes else opts)
    eval_pts = ct.sample_bone_points(EVAL_POINTS, np.random.default_rng(EVAL_POINTS_SEED))
    return ct, intr, registrar, registrar.refiner(), DRRRenderer(ct, intr), eval_pts


def emit_row(rows: list, row: dict, out) -> None:
    """Append ``row`` to ``rows``, print it as one JSON line and rewrite ``out`` with all rows so far (a probe that
    is stopped keeps what it measured)."""
    rows.append(row)
    print(json.dumps(row), flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(rows, indent=1))
