"""``rayemb train``: train the ray-embedding network (CPU, one GPU, or several GPUs/nodes with torch DDP).

Owns: training the network (InfoNCE loop, checkpoints, validation, DDP).

The InfoNCE loss over query pixels, the training loop (progress bar, fixed seeds, checkpoints, resume,
time budget), validation localisation error (px at network size, mm at the detector) and exporting the
weights (``model.save_model``).

Loss per (query, point X): logits over ALL pixels p of the query = s_p / τ with
s_p = ‖U_Xᵀ e_p‖ / ‖e_p‖ (``detect.gram_scores``; U_X spans X's T template embeddings); target = the
pixel of X's projection. Points: up to 40 bone points visible in the query and in every template.

Distributed: run with ``torchrun --nproc_per_node N -m RayEmbRegistrationLib.training.train ...`` (NCCL on
GPUs, gloo on CPU). Every rank draws its own batches from ``default_rng([seed, step, rank])`` (so a resumed
run continues the same stream); rank 0 validates and writes checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry.camera import DEEPFLUORO_PIXEL_MM, DEEPFLUORO_SIZE_PX
from ..detection.detect import gram_scores, score_maps_argmax, subspace_basis, subspace_scores
from ..detection.templates import sample_embeddings
from ..detection.model import ModelConfig, build_model, normalize_image, save_model
from ..progress import CancelFn, ProgressFn, check_cancel
from .augment import augment_images
from ..detection.templates import inference_template_angles
from .data import ShardSet

__all__ = ["train", "infonce_loss", "evaluate", "add_train_args", "train_main", "pixel_mm"]


def pixel_mm(size: int) -> float:
    """Detector pixel size (mm) of the DeepFluoro-like detector binned to ``size`` pixels."""
    return DEEPFLUORO_PIXEL_MM * DEEPFLUORO_SIZE_PX / size


def infonce_loss(f_query: torch.Tensor, f_templates: torch.Tensor, uv_query, uv_templates, valid, tau: float,
                 uv_templates_out=None, valid_out=None, null_score: float | None = None):
    """Mean InfoNCE loss.

    Args:
        f_query: (B, D, S, S) query embeddings; f_templates: (T, D, S, S) (shared by the B queries).
        uv_query: (B, N, 2); uv_templates: (B, T, N, 2); valid: (B, N) bool.
        null_score: with it, one more logit, ``null_score / τ``, stands for "not in this image": a point the query
            shows must score above it at its pixel, and the points of ``uv_templates_out`` (B, T, M, 2) /
            ``valid_out`` (B, M) — seen by the templates, not by the query — must score below it everywhere, so
            that a detection's peak score says whether the point is in view at all.
    """
    B, D, S, _ = f_query.shape
    losses = []
    null = None if null_score is None else torch.tensor(float(null_score) / tau, dtype=f_query.dtype, device=f_query.device)

    def logits(b: int, uv_t) -> torch.Tensor:
        E, _ = sample_embeddings(f_templates, uv_t)  # (T, n, D)
        s = gram_scores(E.permute(1, 2, 0), f_query[b].reshape(D, -1).T) / tau  # (n, P)
        return s if null is None else torch.cat([s, null.expand(len(s), 1)], 1)

    for b in range(B):
        m = valid[b]
        if m.sum() > 0:
            s = logits(b, uv_templates[b][:, m])
            uv = uv_query[b][m].round().long().clamp(0, S - 1)
            losses.append(F.cross_entropy(s, (uv[:, 1] * S + uv[:, 0]).to(s.device)))
        if null is not None and valid_out is not None and valid_out[b].sum() > 0:
            s = logits(b, uv_templates_out[b][:, valid_out[b]])
            losses.append(F.cross_entropy(s, torch.full((len(s),), S * S, dtype=torch.long, device=s.device)))
    if not losses:
        return f_query.sum() * 0.0
    return torch.stack(losses).mean()


@torch.no_grad()
def localisation_errors(model, query_imgs, template_imgs, uv_query, uv_templates, valid, device="cpu"):
    """Detect points with the inference path (SVD basis, argmax + refinement); returns (errors_px, conf) arrays."""
    x = normalize_image(torch.cat([query_imgs, template_imgs]), size=None).to(device)
    f = model(x)
    B = len(query_imgs)
    fq, ft = f[:B], f[B:]
    D, S = f.shape[1], f.shape[-1]
    errs, confs = [], []
    for b in range(B):
        m = valid[b]
        if m.sum() == 0:
            continue
        E, _ = sample_embeddings(ft, uv_templates[b][:, m].to(device))
        U, _ = subspace_basis(E.permute(1, 2, 0))
        sc = subspace_scores(U, fq[b].reshape(D, -1).T)
        uv, conf = score_maps_argmax(sc, S, S)
        errs.append(np.linalg.norm(uv.cpu().numpy() - uv_query[b][m].numpy(), axis=1))
        confs.append(conf.cpu().numpy())
    return (np.concatenate(errs) if errs else np.zeros(0)), (np.concatenate(confs) if confs else np.zeros(0))


def summarize(errs: np.ndarray, conf: np.ndarray, size: int) -> dict:
    if len(errs) == 0:
        return {"n": 0}
    top = errs[np.argsort(-conf)[: max(1, len(errs) // 4)]]
    mm = pixel_mm(size)
    return {
        "n": int(len(errs)), "median_px": float(np.median(errs)), "mean_px": float(errs.mean()),
        "p90_px": float(np.percentile(errs, 90)), "median_mm": float(np.median(errs) * mm),
        "mean_mm": float(errs.mean() * mm), "p90_mm": float(np.percentile(errs, 90) * mm),
        "top25_median_px": float(np.median(top)), "top25_mean_px": float(top.mean()),
        "top25_median_mm": float(np.median(top) * mm),
        "within_3px": float((errs <= 3).mean()),
    }


def evaluate(model, shards: ShardSet, device="cpu", max_queries: int = 16, n_points: int = 40,
             seed: int = 12345, template_angles=tuple(inference_template_angles(4))) -> dict:
    """Localisation error on ``shards`` with the fixed inference templates (deterministic subset of queries)."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    errs, confs = [], []
    per_shard = max(1, max_queries // len(shards.shards))
    for si in range(len(shards.shards)):
        nq = len(shards.shards[si]["queries"])
        for q in rng.choice(nq, min(per_shard, nq), replace=False):
            t_idx = shards.template_indices(si, template_angles)
            b = shards.batch(rng, n_templates=len(t_idx), n_points=n_points, shard=si, query_idx=[q], template_idx=t_idx)
            e, c = localisation_errors(model, b["query"], b["templates"], b["uv_query"], b["uv_templates"], b["valid"], device)
            errs.append(e)
            confs.append(c)
    model.train(was_training)
    return summarize(np.concatenate(errs), np.concatenate(confs), shards.size)


def _dist_setup(device: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return rank, world, dev


def train(data, out_dir, val_data=None, steps: int = 3000, batch_queries: int = 4, n_templates: int = 4,
          n_points: int = 40, lr: float = 1e-3, tau: float | None = None, seed: int = 0, device: str = "cpu",
          config: ModelConfig | None = None, resume: bool = True, max_minutes: float | None = None,
          val_every: int = 200, ckpt_every: int = 50, threads: int | None = None, bar: bool = True,
          init_weights: str | None = None, refresh_every: int = 0, dump_rank_weights: bool = False,
          log=print, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
          resume_from: str | Path | None = None, clock=time.time, warmup_steps: int | None = None,
          anneal_to_budget: bool = False, n_outside: int = 0, null_score: float = 0.9) -> dict:
    """Train; returns the last validation summary (rank 0) or {}.

    Writes into ``out_dir``: ``last.pt`` (model + optimiser + step; ``resume`` continues from it),
    ``model.safetensors`` (+ ``.json``, ``.sha256``; the latest weights) and ``metrics.jsonl``.
    ``refresh_every`` > 0 picks up shards that a concurrent ``generate`` adds (then the batch stream depends on
    timing; leave 0 for exactly reproducible runs).
    ``resume_from``: a checkpoint (a ``last.pt``, e.g. one committed to the repository) to continue exactly —
    weights, optimiser, schedule, step and data seed — into ``out_dir``; the run is then the same, bit for bit, as
    if it had never stopped (the batch of step k depends only on the seed and k).
    ``bar``: a tqdm bar on stderr; ``progress(fraction, message)``: the fraction of the step count or, with
    ``max_minutes``, of the time budget, whichever is further; ``cancel()``: checked before every step
    (``progress.Cancelled``; the last checkpoint stays as it was).
    ``warmup_steps``: linear learning-rate warm-up (default ``min(100, steps // 10 + 1)``).
    ``anneal_to_budget``: with ``max_minutes``, the cosine schedule runs over the time budget (the share of it
    spent, or of ``steps``, whichever is further), so a time-budgeted run ends at the low learning rate whatever
    its step rate (``rayemb prepare``); the schedule then depends on the clock, so such a run is not bit-for-bit
    repeatable.
    ``n_outside``: per query, up to this many points the templates see but the query does not, taught to score
    below ``null_score`` everywhere (``infonce_loss``); 0 = the plain InfoNCE of visible points.
    ``tau``: the InfoNCE temperature; None = the initial weights' (fine-tuning) or 0.03 (from scratch).
    ``clock``: what ``max_minutes`` counts — wall time (``time.time``, default) or this process's CPU time
    (``time.process_time``: a budget in CPU-minutes that other jobs on the machine do not eat into).
    """
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(int(threads))
    rank, world, dev = _dist_setup(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = data if isinstance(data, ShardSet) else ShardSet(data)
    val = None

    def get_val():  # lazily (a validation ``generate`` may still be running), rank 0 only
        nonlocal val
        if val_data is None or rank != 0:
            return None
        if val is None:
            try:
                val = val_data if isinstance(val_data, ShardSet) else ShardSet(val_data)
            except ValueError:
                return None
        else:
            val.refresh()
        return val
    if init_weights:  # fine-tuning: the architecture, size and (unless ``tau`` is given) τ come from the weights
        from ..detection.model import load_model

        init = load_model(init_weights)
        cfg = init.config
        tau = cfg.tau if tau is None else float(tau)
        cfg = ModelConfig.from_dict({**cfg.to_dict(), "tau": tau})
        if cfg.image_size != shards.size:  # fully convolutional: the weights transfer, the config takes the data's size
            step_px = 2 ** len(cfg.widths)  # the stem and every encoder level halve the image
            if shards.size % step_px:
                raise ValueError(f"data has {shards.size}² images; fine-tuning {init_weights} at another size needs a "
                                 f"multiple of {step_px} px (the network halves the image {len(cfg.widths)} times).")
            if rank == 0:
                log(f"fine-tuning the {cfg.image_size}² network {init_weights} at {shards.size}²")
            cfg = ModelConfig.from_dict({**cfg.to_dict(), "image_size": shards.size})
    else:
        init = None
        cfg = config or ModelConfig()
        tau = 0.03 if tau is None else float(tau)
        cfg = ModelConfig.from_dict({**cfg.to_dict(), "image_size": shards.size, "tau": tau})
    if getattr(shards, "template_tiles", False):  # trained on template tiles: detection is to use them too
        cfg = ModelConfig.from_dict({**cfg.to_dict(), "template_tiles": True})
    torch.manual_seed(seed)
    model = build_model(cfg).to(dev)
    if init is not None:
        model.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, int(warmup_steps)) if warmup_steps is not None else min(100, steps // 10 + 1)
    spent = [0.0]  # share of the time budget spent (read by the schedule with ``anneal_to_budget``)

    def lr_factor(s: int) -> float:
        f = min(1.0, s / max(1, steps))
        if anneal_to_budget and max_minutes:
            f = max(f, min(1.0, spent[0]))
        return min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * f)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    step = 0
    ck = out / "last.pt"
    source = Path(resume_from) if resume_from is not None else (ck if resume and ck.exists() else None)
    if source is not None and not source.is_file():
        raise ValueError(f"--resume {source}: no such checkpoint (a last.pt written by 'rayemb train').")
    if source is not None:
        state = torch.load(source, map_location="cpu", weights_only=True)
        now = json.dumps(shards.describe()) if hasattr(shards, "describe") else None
        if rank == 0 and state.get("data") is not None and now is not None and state["data"] != now:
            log(f"warning: the checkpoint was trained on other data ({state['data']}); continuing on {now} — "
                "the run is not the one it would have been without the stop")
        if "seed" in state and int(state["seed"]) != seed:
            if rank == 0:
                log(f"the checkpoint was trained with --seed {state['seed']}: continuing with it (not {seed})")
            seed = int(state["seed"])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = int(state["step"])
        if rank == 0:
            log(f"resumed from {source} at step {step}")
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    t_start, c_start = time.time(), clock()
    summary: dict = {}
    metrics = out / "metrics.jsonl"

    def checkpoint(final=False):
        if rank != 0:
            return
        tmp = out / "last.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                    "seed": seed, "config": json.dumps(cfg.to_dict()),
                    "data": json.dumps(shards.describe()) if hasattr(shards, "describe") else None}, tmp)
        tmp.replace(ck)
        save_model(model, out / "model.safetensors", metadata={"step": step, "train_seconds": time.time() - t_start, **summary})

    tq = tqdm(total=steps, initial=step, desc=f"train r{rank}", disable=not bar or rank != 0, unit="step")
    ema = None
    model.train()
    while step < steps:
        check_cancel(cancel, "training")
        if refresh_every and step % refresh_every == 0 and step > 0:
            n_new = shards.refresh()
            if n_new and rank == 0:
                log(f"step {step}: {n_new} new shards ({len(shards.shards)} in all)")
        rng = np.random.default_rng([seed, step, rank])
        shards.at_step(step)
        b = shards.batch(rng, n_queries=batch_queries, n_templates=n_templates, n_points=n_points, n_outside=n_outside)
        xq = augment_images(normalize_image(b["query"]), rng)
        xt = normalize_image(b["templates"])
        f = net(torch.cat([xq, xt]).to(dev))
        loss = infonce_loss(f[: len(xq)], f[len(xq):], b["uv_query"].to(dev), b["uv_templates"].to(dev),
                            b["valid"].to(dev), tau, uv_templates_out=b["uv_templates_out"].to(dev),
                            valid_out=b["valid_out"].to(dev), null_score=null_score if n_outside else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if max_minutes:
            spent[0] = (clock() - c_start) / (60 * max_minutes)
        sched.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        tq.update(1)
        tq.set_postfix(loss=f"{ema:.3f}")
        if progress is not None and rank == 0:
            done = step / steps
            if max_minutes:
                done = max(done, (clock() - c_start) / (60 * max_minutes))
            progress(min(done, 1.0), f"training step {step}, loss {ema:.3f}")
        if rank == 0 and (step % 10 == 0 or step == 1 or step == steps):
            with open(metrics, "a") as fh:
                fh.write(json.dumps({"step": step, "loss": loss.item(), "loss_ema": ema, "lr": sched.get_last_lr()[0],
                                     "elapsed_s": time.time() - t_start}) + "\n")
        out_of_time = max_minutes is not None and (clock() - c_start) > 60 * max_minutes
        if world > 1:  # all ranks must stop together
            import torch.distributed as dist

            flag = torch.tensor([1.0 if out_of_time else 0.0])
            dist.all_reduce(flag)
            out_of_time = bool(flag.item() > 0)
        if rank == 0 and (step % val_every == 0 or step == steps or out_of_time) and get_val() is not None:
            summary = {"step": step, **evaluate(model, val, dev)}
            with open(metrics, "a") as fh:
                fh.write(json.dumps({"val": summary, "elapsed_s": time.time() - t_start}) + "\n")
            log(f"step {step} val: median {summary.get('median_px', float('nan')):.2f}px "
                f"({summary.get('median_mm', float('nan')):.2f} mm) p90 {summary.get('p90_px', float('nan')):.1f}px "
                f"top25% {summary.get('top25_median_px', float('nan')):.2f}px loss_ema {ema:.3f}")
        if step % ckpt_every == 0 or step == steps or out_of_time:
            checkpoint()
        if out_of_time:
            if rank == 0:
                log(f"time budget of {max_minutes} min reached at step {step}")
            break
    tq.close()
    if dump_rank_weights:  # DDP consistency check: every rank writes its own copy of the weights
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / f"rank{rank}_weights.pt")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return summary


def add_train_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", help="folder(s) written by 'rayemb generate' (cached DRRs)")
    src.add_argument("--ct", nargs="+", help="train on the fly on these CTs ('all' = every training CT of "
                     "training/cts.py; names of that table or paths), new synthetic anatomy and poses all the time")
    p.add_argument("--hold-out", nargs="*", default=[], metavar="NAME",
                   help="with --ct all: leave out every CT of these CTs' patients (leave-one-CT-out)")
    p.add_argument("--slots", type=int, default=4, help="with --ct: synthetic patients live at a time")
    p.add_argument("--variant-every", type=int, default=20, help="with --ct: a new synthetic patient every N steps")
    p.add_argument("--stream-queries", type=int, default=12, help="with --ct: query DRRs per synthetic patient")
    p.add_argument("--size", type=int, default=None,
                   help="with --ct: network input size (default: the --init network's, else 224); an --init network "
                        "is fine-tuned at this size")
    p.add_argument("--inference-templates", action="store_true",
                   help="with --ct: the templates are the 4 views detection uses (±20°, ±20°) instead of 4 random "
                        "views of the 3 × 3 grid {-20, 0, 20}²")
    p.add_argument("--workers", type=int, choices=(0, 1), default=0,
                   help="with --ct on a CPU: 1 = a separate process renders the coming synthetic patients while the "
                        "network trains (same data; give the training --threads one core fewer)")
    p.add_argument("--val", nargs="*", default=None,
                   help="validation folder(s) (held-out poses); with --ct the default is OUT/val, rendered once "
                        "from the training CTs at clinical poses")
    p.add_argument("--out", required=True, help="run folder: last.pt, model.safetensors, metrics.jsonl")
    p.add_argument("--steps", type=int, default=3000, help="steps of the learning-rate schedule (cosine to 0.1×)")
    p.add_argument("--batch", type=int, default=4, help="queries per step (per process)")
    p.add_argument("--templates", type=int, default=4, help="templates per query (T)")
    p.add_argument("--points", type=int, default=40, help="3D points per query")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tau", type=float, default=None, help="InfoNCE temperature (default: the --init weights', else 0.03)")
    p.add_argument("--backbone", default="unet_s2", help="registered backbone name (model.BACKBONES)")
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 96, 128])
    p.add_argument("--dim", type=int, default=32, help="embedding dimension D")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if OUT/last.pt exists")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue this checkpoint (a last.pt, e.g. a committed one) exactly, writing into --out")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this wall time")
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--refresh-every", type=int, default=0, help="re-scan --data for new shards every N steps")
    p.add_argument("--dump-rank-weights", action="store_true", help="each rank writes OUT/rank<r>_weights.pt (DDP check)")
    p.add_argument("--init", default=None, help="start from these weights (.safetensors)")
    return p


def stream_from_args(args: argparse.Namespace, size: int, voxel_mm: float, template_bone_multiplier: float):
    """``--ct`` → (``stream.VariantStream`` of those CTs, the list of CT specs)."""
    from ..inputs.volume import load_ct
    from .cts import resolve_ct_path, training_set
    from .stream import VariantStream

    specs = training_set(args.hold_out) if args.ct == ["all"] else list(args.ct)
    if args.hold_out and args.ct != ["all"]:
        raise ValueError("--hold-out works with --ct all (name the CTs yourself otherwise)")
    cts = [load_ct(resolve_ct_path(c)) for c in specs]
    angles = inference_template_angles(4) if getattr(args, "inference_templates", False) else None
    return VariantStream(cts, size=size, voxel_mm=voxel_mm, slots=args.slots, variant_every=args.variant_every,
                         queries=args.stream_queries, template_bone_multiplier=template_bone_multiplier,
                         seed=args.seed, device=args.device, template_angles=angles,
                         workers=getattr(args, "workers", 0)), specs


def train_main(args: argparse.Namespace) -> int:
    cfg = ModelConfig(backbone=args.backbone, dim=args.dim, widths=tuple(args.widths))
    data, val = args.data, args.val or None
    if args.resume and Path(args.resume).is_file():  # the data stream is built with the checkpoint's seed
        args.seed = int(torch.load(args.resume, map_location="cpu", weights_only=True).get("seed", args.seed))
    if not args.ct and (args.size or args.inference_templates):
        raise ValueError("--size and --inference-templates shape the on-the-fly data of --ct; cached --data has the "
                         "size and templates 'rayemb generate' rendered.")
    if args.ct:
        if args.init:
            from ..detection.model import load_model

            base = load_model(args.init).config
        else:
            base = cfg
        size = int(args.size or base.image_size)
        step_px = 2 ** len(base.widths)  # the stem and every encoder level halve the image
        if size < step_px or size % step_px:
            raise ValueError(f"--size {size}: the network halves the image {len(base.widths)} times, so give a "
                             f"multiple of {step_px} px (e.g. 96, 128 or 224).")
        data, specs = stream_from_args(args, size, base.voxel_mm, base.template_bone_multiplier)
        if val is None:
            from .generate import generate

            val_dir = Path(args.out) / "val"
            generate(specs, val_dir, n_variants=1, n_queries=4, size=size, voxel_mm=base.voxel_mm,
                     seed=args.seed + 99991, augment=False, template_bone_multiplier=base.template_bone_multiplier,
                     pose_center="clinical", threads=args.threads)
            val = [str(val_dir)]
    try:
        s = train(data, args.out, val_data=val, steps=args.steps, batch_queries=args.batch,
                  n_templates=args.templates, n_points=args.points, lr=args.lr, tau=args.tau, seed=args.seed,
                  device=args.device, config=cfg, resume=not args.no_resume, max_minutes=args.max_minutes,
                  val_every=args.val_every, ckpt_every=args.ckpt_every, threads=args.threads, init_weights=args.init,
                  refresh_every=args.refresh_every, dump_rank_weights=args.dump_rank_weights, resume_from=args.resume,
                  log=lambda m: print(m, flush=True))
    finally:
        if isinstance(data, ShardSet):  # (the stream's render process stops with the run)
            data.close()
    if s:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(train_main(add_train_args(argparse.ArgumentParser(description=__doc__)).parse_args()))
