"""Which torch device a run uses.

Owns: resolving ``"auto" | "cpu" | "cuda[:N]"`` against what torch sees, with a clear error for a missing GPU.
"""

from __future__ import annotations

from .errors import RegistrationError

__all__ = ["resolve_device"]


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` if torch sees a GPU, else ``"cpu"``; ``"cuda"`` without a GPU → error."""
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise RegistrationError("device 'cuda' requested but PyTorch sees no CUDA GPU; use --device cpu or auto.")
    if d not in ("cpu",) and not d.startswith("cuda"):
        raise RegistrationError(f"unknown device {device!r}; use auto, cpu or cuda.")
    return d
