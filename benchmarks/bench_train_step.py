"""Cost of one training step of preparation (``rayemb prepare``'s recipe) under execution variants, side by side.

One real batch of the sample CT (4 augmented query DRRs + 4 inference templates at the prepared input size, 40 points,
``prepare.training_stream``) is built once; then, for each variant, the bundled network is fine-tuned on it for
``--steps`` steps (forward, InfoNCE loss, backward, AdamW) and the median step time is printed, with the first step
(which includes any compilation) and the last loss. Rendering is not timed here (it runs in the render process beside
the training, ``training.stream``). Variants (comma-joined keys, each ``=1``):

  * ``base``          eager float32, as ``prepare`` trains;
  * ``cl=1``          channels-last memory format;
  * ``bf16=1``        bfloat16 autocast on the CPU;
  * ``freeze=1``      the stem (first encoder level) frozen: no weight gradients there;
  * ``comp=1``        ``torch.compile`` (inductor);
  * ``tng=1``         templates without gradients (their embeddings computed under ``torch.no_grad``, only the
                      queries' backward; measured, not adopted: docs/network.md).

Usage (run alone; one torch thread, as ``prepare`` trains beside its render process on a 2-core CPU):
    .venv/bin/python benchmarks/bench_train_step.py base cl=1 bf16=1 freeze=1 comp=1
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.detection.model import ModelConfig, build_model, load_model, normalize_image  # noqa: E402
from RayEmbRegistrationLib.training.prepare import TRAINING, training_stream  # noqa: E402
from RayEmbRegistrationLib.resources import BUNDLED_MODEL, SAMPLE_CT  # noqa: E402
from RayEmbRegistrationLib.training.augment import augment_images  # noqa: E402
from RayEmbRegistrationLib.training.train import infonce_loss  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402

KEYS = ("cl", "bf16", "freeze", "comp", "tng")


def parse_variant(text: str) -> dict[str, bool]:
    if text == "base":
        return {}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in KEYS or value not in ("0", "1"):
            raise SystemExit(f"variant {text!r}: give 'base' or comma-joined {', '.join(k + '=1' for k in KEYS)}")
        out[key] = value == "1"
    return out


def time_variant(base, cfg, batch, steps: int, cl=False, bf16=False, freeze=False, comp=False, tng=False) -> dict:
    model = build_model(cfg)
    model.load_state_dict(base.state_dict())
    model.train()
    if freeze:
        for p in model.backbone.stem.parameters():
            p.requires_grad_(False)
    x = torch.cat([batch["query"], batch["templates"]])
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fwd = torch.compile(model) if comp else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], TRAINING["lr"])
    nq = len(batch["query"])
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            if tng:
                fq = fwd(x[:nq])
                with torch.no_grad():
                    ft = fwd(x[nq:])
                f = torch.cat([fq, ft])
            else:
                f = fwd(x)
        f = f.float()
        loss = infonce_loss(f[:nq], f[nq:], batch["uv_query"], batch["uv_templates"], batch["valid"], 0.03)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return {"first_s": times[0], "median_s": float(np.median(times[1:])), "loss": float(loss.detach())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", default=["base", "cl=1", "bf16=1", "freeze=1"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    variants = [(v, parse_variant(v)) for v in a.variants]
    base = load_model(BUNDLED_MODEL)
    cfg = ModelConfig.from_dict({**base.config.to_dict(), "image_size": int(TRAINING["size"])})
    stream = training_stream(load_ct(SAMPLE_CT), base.config, TRAINING)
    rng = np.random.default_rng(0)
    raw = stream.batch(rng, n_queries=int(TRAINING["batch"]), n_templates=int(TRAINING["templates"]),
                       n_points=int(TRAINING["points"]))
    batch = {**raw, "query": augment_images(normalize_image(raw["query"]), rng),
             "templates": normalize_image(raw["templates"])}
    print(f"| variant | first step s | median step s | vs base | loss after {a.steps} steps |")
    print("|---|---|---|---|---|")
    ref = None
    for name, kw in variants:
        r = time_variant(base, cfg, batch, a.steps, **kw)
        ref = ref or r["median_s"]
        print(f"| {name} | {r['first_s']:.2f} | {r['median_s']:.4f} | {r['median_s'] / ref:.2f}× | {r['loss']:.3f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
