"""Progress reporting and cancellation, shared by every long step (CLI progress bars, Slicer's dialog).

Owns: the ``ProgressFn`` / ``CancelFn`` callback types, the one ``Cancelled`` exception and sub-progress ranges.

A long function takes ``progress(fraction in [0, 1], message)`` and ``cancel() -> bool``, both optional; it
calls ``check_cancel(cancel)`` between units of work and raises ``Cancelled`` when the user asked to stop, so
the CLI (tqdm, exit 130) and the Slicer module (progress dialog with Cancel) share one implementation and
recognise one exception type.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator, Optional

__all__ = ["ProgressFn", "CancelFn", "Cancelled", "Terminated", "check_cancel", "sub_progress", "signals_deferred",
           "terminate_on_sigterm", "deliver_lost_interrupts", "DecileLog"]

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class Cancelled(Exception):
    """The user cancelled (the ``cancel`` callback returned True). Nothing was written."""


class Terminated(Cancelled):
    """The process was asked to stop (SIGTERM); raised by ``terminate_on_sigterm``'s handler."""


def check_cancel(cancel: Optional[CancelFn], what: str = "operation") -> None:
    """Raise ``Cancelled("<what> cancelled")`` if ``cancel()`` returns True, and deliver an interrupt Python lost in
    a finaliser (``deliver_lost_interrupts``)."""
    deliver_lost_interrupts()
    if cancel is not None and cancel():
        raise Cancelled(f"{what} cancelled")


class DecileLog:
    """A progress callback that logs one line per tenth of the work (and the first and last), not one per step:
    what a console or log file should get from a long step whose progress dialog shows every message."""

    def __init__(self, log: Callable[[str], None], prefix: str = "") -> None:
        self.log, self.prefix, self._last = log, prefix, -1

    def __call__(self, fraction: float, message: str = "") -> None:
        decile = min(10, max(0, int(float(fraction) * 10 + 1e-9)))
        if decile != self._last:
            self._last = decile
            self.log(f"{self.prefix}{message} ({100 * float(fraction):.0f}%)")


def sub_progress(progress: Optional[ProgressFn], lo: float, hi: float, prefix: str = "") -> Optional[ProgressFn]:
    """``progress`` mapped onto ``[lo, hi]`` of the caller's range (fractions clipped to [0, 1]); ``prefix``
    is put before every message. ``None`` stays ``None``."""
    if progress is None:
        return None

    def sub(fraction: float, message: str = "") -> None:
        progress(lo + (hi - lo) * float(min(max(fraction, 0.0), 1.0)), prefix + message if message else prefix.rstrip(": "))

    return sub


def _raise_terminated(signum, frame) -> None:
    raise Terminated("terminated (SIGTERM)")


#: interrupts (KeyboardInterrupt / Terminated) that Python swallowed because its signal handler ran inside a
#: finaliser (``__del__``, a weakref callback): Python only prints "Exception ignored in …" and goes on
_lost: list[BaseException] = []
_previous_unraisablehook = None


def _keep_lost_interrupts(unraisable) -> None:
    if isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
        _lost.append(unraisable.exc_value)
    (_previous_unraisablehook or sys.__unraisablehook__)(unraisable)


def deliver_lost_interrupts() -> None:
    """Raise again, once, an interrupt that landed in a finaliser and was swallowed there (so a Ctrl-C or a SIGTERM
    is never ignored: without this the run would go on and write its results). Called by ``check_cancel`` (between
    units of work) and ``signals_deferred`` (before results are moved into place); a no-op when nothing was lost."""
    if _lost:
        exc = _lost[-1]
        _lost.clear()
        raise Terminated(str(exc)) if isinstance(exc, Terminated) else KeyboardInterrupt


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into ``Terminated`` (so ``finally`` blocks clean up, as for Ctrl-C), and keep interrupts that
    land in a finaliser for ``deliver_lost_interrupts``; main thread only."""
    global _previous_unraisablehook
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
        if sys.unraisablehook is not _keep_lost_interrupts:
            _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _keep_lost_interrupts


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM back for the block (a file move, a native writer) and deliver them when it
    ends: ``KeyboardInterrupt`` / ``Terminated``. Outside the main thread the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    deliver_lost_interrupts()
    caught: list[int] = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if signal.SIGTERM in caught:
            raise Terminated("terminated (SIGTERM)")
        if signal.SIGINT in caught:
            raise KeyboardInterrupt
