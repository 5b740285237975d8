"""Progress and cancellation (``progress.py``): sub-ranges, the one Cancelled, used by every long step."""

import pytest

from RayEmbRegistrationLib.progress import Cancelled, check_cancel, sub_progress


def test_sub_progress_maps_and_clips():
    seen = []
    sub = sub_progress(lambda f, m: seen.append((round(f, 6), m)), 0.2, 0.6, "stage: ")
    sub(0.5, "half")
    sub(2.0, "")
    sub(-1.0, "x")
    assert seen == [(0.4, "stage: half"), (0.6, "stage"), (0.2, "stage: x")]
    assert sub_progress(None, 0, 1) is None
    nested = sub_progress(sub, 0.5, 1.0)
    nested(0.0, "n")
    assert seen[-1] == (0.4, "stage: n")


def test_check_cancel_raises_the_one_cancelled():
    check_cancel(None)
    check_cancel(lambda: False)
    with pytest.raises(Cancelled, match="training cancelled"):
        check_cancel(lambda: True, "training")


def test_training_generation_and_finetune_honour_cancel(sample_ct, tmp_path):
    """generate (and through it finetune) stops at the first check with the same exception."""
    from RayEmbRegistrationLib.training.generate import generate

    with pytest.raises(Cancelled):
        generate([sample_ct], tmp_path / "d", n_variants=1, n_queries=1, size=32, voxel_mm=6.0, n_points=16,
                 bar=False, cancel=lambda: True)
    assert not list((tmp_path / "d").glob("shard_*.npz"))


@pytest.mark.parametrize("sig, exc", [("SIGINT", KeyboardInterrupt), ("SIGTERM", "Terminated")])
def test_signals_are_held_back_inside_a_critical_block(sig, exc):
    import os
    import signal

    from RayEmbRegistrationLib.progress import Terminated, signals_deferred, terminate_on_sigterm

    exc = Terminated if exc == "Terminated" else exc
    old, old_int = signal.getsignal(signal.SIGTERM), signal.signal(signal.SIGINT, signal.default_int_handler)
    terminate_on_sigterm()  # (the suite may run with SIGINT ignored: started in the background of a script)
    try:
        done = []
        with pytest.raises(exc):
            with signals_deferred():
                os.kill(os.getpid(), getattr(signal, sig))
                done.append("the block ran to its end")
        assert done == ["the block ran to its end"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_that_lands_in_a_finaliser_is_not_lost(sig):
    """Python swallows what a signal handler raises while a ``__del__`` runs (it prints "Exception ignored" and goes
    on), so a Ctrl-C or SIGTERM at that moment would let the run finish and write its results. After
    ``terminate_on_sigterm`` (the CLI's set-up) the next ``check_cancel`` raises it, once (``signals_deferred``
    does the same)."""
    import os
    import signal
    import sys

    from RayEmbRegistrationLib.progress import Terminated, terminate_on_sigterm

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), getattr(signal, sig))
            for _ in range(1000):  # the handler runs at one of these bytecodes, inside __del__
                pass

    old_term, old_hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal
    terminate_on_sigterm()
    try:
        x = Finaliser()
        del x  # the interrupt is raised inside __del__ and swallowed there
        with pytest.raises(KeyboardInterrupt if sig == "SIGINT" else Terminated):
            check_cancel(None)
        check_cancel(None)  # delivered once
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        sys.unraisablehook = old_hook


def test_decile_log_writes_one_line_per_tenth():
    from RayEmbRegistrationLib.progress import DecileLog

    lines = []
    log = DecileLog(lines.append, "reg: ")
    for i in range(201):
        log(i / 200, f"step {i}")
    assert len(lines) == 11 and lines[0] == "reg: step 0 (0%)" and lines[-1] == "reg: step 200 (100%)"
