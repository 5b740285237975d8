"""Progress reporting and cancellation, shared by every long step (CLI progress bars, Slicer's dialog).

Owns: the ``ProgressFn`` / ``CancelFn`` callback types, the one ``Cancelled`` exception and sub-progress ranges.

A long function takes ``progress(fraction in [0, 1], message)`` and ``cancel() -> bool``, both optional; it
calls ``check_cancel(cancel)`` between units of work and raises ``Cancelled`` when the user asked to stop, so
the CLI (tqdm, exit 130) and the Slicer module (progress dialog with Cancel) share one implementation and
recognise one exception type.
"""

from __future__ import annotations

from typing import Callable, Optional

__all__ = ["ProgressFn", "CancelFn", "Cancelled", "check_cancel", "sub_progress"]

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class Cancelled(Exception):
    """The user cancelled (the ``cancel`` callback returned True). Nothing was written."""


def check_cancel(cancel: Optional[CancelFn], what: str = "operation") -> None:
    """Raise ``Cancelled("<what> cancelled")`` if ``cancel()`` returns True (no-op without a callback)."""
    if cancel is not None and cancel():
        raise Cancelled(f"{what} cancelled")


def sub_progress(progress: Optional[ProgressFn], lo: float, hi: float, prefix: str = "") -> Optional[ProgressFn]:
    """``progress`` mapped onto ``[lo, hi]`` of the caller's range (fractions clipped to [0, 1]); ``prefix``
    is put before every message. ``None`` stays ``None``."""
    if progress is None:
        return None

    def sub(fraction: float, message: str = "") -> None:
        progress(lo + (hi - lo) * float(min(max(fraction, 0.0), 1.0)), prefix + message if message else prefix.rstrip(": "))

    return sub
