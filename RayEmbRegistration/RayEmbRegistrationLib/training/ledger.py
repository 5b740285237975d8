"""The training ledger: what one ``rayemb train`` run did, as a row of ``Resources/Models/MODEL.md``.

Owns: ``run_summary`` (a run folder's ``metrics.jsonl`` + checkpoint → steps, hours, the validation curve) and
its Markdown rendering.

Usage (prints the row and the curve to paste into the model card's ledger):
    python -m RayEmbRegistrationLib.training.ledger RUN_DIR [--hardware "1 CPU thread"] [--previous-hours H]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["run_summary", "ledger_markdown"]


def run_summary(run_dir) -> dict:
    """Steps (first → last), wall hours and the validation curve ``[(step, median_px, p90_px, top25_px)]``."""
    run = Path(run_dir)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows if "step" in r and "loss" in r] + [r["val"]["step"] for r in rows if "val" in r]
    if not steps:
        raise ValueError(f"{run / 'metrics.jsonl'} records no training step")
    # a resumed run appends to the same file: wall time is the sum of each segment's last elapsed_s
    hours, last = 0.0, 0.0
    for r in rows:
        e = float(r.get("elapsed_s", 0.0))
        if e < last:
            hours += last
        last = e
    hours = (hours + last) / 3600.0
    curve = [(r["val"]["step"], r["val"]["median_px"], r["val"]["p90_px"], r["val"]["top25_median_px"])
             for r in rows if "val" in r and r["val"].get("n")]
    return {"run": str(run), "first_step": min(steps), "last_step": max(steps), "wall_hours": hours, "curve": curve}


def ledger_markdown(s: dict, hardware: str, previous_hours: float = 0.0) -> str:
    curve = ", ".join(f"{st}: {m:.1f}" for st, m, _, _ in s["curve"]) or "—"
    return (f"| {s['run']} | {hardware} | {s['first_step']}–{s['last_step']} | {s['wall_hours']:.2f} | "
            f"{previous_hours + s['wall_hours']:.2f} | {curve} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder of rayemb train (holds metrics.jsonl)")
    p.add_argument("--hardware", default="CPU")
    p.add_argument("--previous-hours", type=float, default=0.0, help="cumulative hours before this run")
    a = p.parse_args(argv)
    print(ledger_markdown(run_summary(a.run), a.hardware, a.previous_hours))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
