"""Which torch device a run uses.

Owns: resolving ``"auto" | "cpu" | "cuda[:N]"`` against what torch sees, with a clear error for a missing GPU, and
what ``"auto"`` means for each kind of work (``TASKS``).
"""

from __future__ import annotations

from .errors import RegistrationError

__all__ = ["resolve_device", "TASKS"]

#: the kinds of work and where ``"auto"`` runs them.
#:
#: * ``"train"`` (preparation, fine-tuning, training, rendering DRRs): CUDA when torch sees a GPU, else the CPU.
#:   On an H200 ``rayemb prepare --minutes 2`` makes 1,670 training steps against 917 on the 2-core CPU.
#: * ``"register"`` (``pipeline.Registrar``: detection, PnP, refinement, checks): the CPU, also where a GPU exists.
#:   A registration is latency-bound — a 96² network input, DRR batches of a few poses at 32–96², hundreds of small
#:   dependent steps — and on an H200 it is slower than on the 2-core CPU: the same 4 clinical pelvis X-rays and
#:   prepared folder take 7.6–11.5 s each (median 8.8 s) against 3.5–8.2 s (``benchmarks/profile_register.py``;
#:   docs/pipeline.md, "Device").
#:   ``--device cuda`` still runs it on the GPU.
TASKS = ("train", "register")


def resolve_device(device: str, task: str = "train") -> str:
    """``"auto"`` → where ``task`` (one of ``TASKS``) runs best: ``"train"``: ``"cuda"`` if torch sees a GPU, else
    ``"cpu"``; ``"register"``: ``"cpu"``. ``"cuda"`` without a GPU → error naming what to use instead."""
    import torch

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if task == "train" and torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise RegistrationError("device 'cuda' requested but PyTorch sees no CUDA GPU; use --device cpu or auto.")
    if d not in ("cpu",) and not d.startswith("cuda"):
        raise RegistrationError(f"unknown device {device!r}; use auto, cpu or cuda.")
    return d
