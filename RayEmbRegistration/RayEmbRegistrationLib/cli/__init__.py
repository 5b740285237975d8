"""The ``rayemb`` command: one module per subcommand (register, detect, render, demo, evaluate, training).

Owns: ``main``: the parser assembled from one module per subcommand, errors → message + exit status.

``main`` builds the parser from the subcommand modules and turns errors into one clear message on stderr and the
exit status of ``common`` (0 ok, 2 bad input / registration impossible, 3 no usable network, 4 registration
rejected, 130 interrupted, 143 terminated)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import demo, detect, evaluate, prepare, register, render, train_landmarks, training
from .common import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_NO_MODEL, EXIT_TERMINATED, CLIError

__all__ = ["main", "build_parser", "CLIError"]


def build_parser() -> argparse.ArgumentParser:
    F = argparse.ArgumentDefaultsHelpFormatter
    ap = argparse.ArgumentParser(
        prog="rayemb",
        description="Markerless 2D/3D X-ray to CT registration with ray embeddings (RayEmb). World = the CT's RAS "
                    "frame (mm); cameras are OpenCV pinholes; pixels (u, v) = (column, row), integer at pixel centres.",
        formatter_class=F,
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (register, detect, render, demo, evaluate, prepare, train_landmarks):
        module.add_parser(sub, F)
    training.add_parsers(sub, F)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rayemb``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from ..errors import ModelUnavailable
    from ..detection.model import ModelFileError
    from ..progress import Cancelled, Terminated, terminate_on_sigterm

    terminate_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except (ModelUnavailable, ModelFileError) as exc:
        print(f"rayemb {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_NO_MODEL
    except Terminated as exc:
        print(f"rayemb {args.command}: {exc}; nothing half written", file=sys.stderr)
        return EXIT_TERMINATED
    except Cancelled as exc:
        print(f"rayemb {args.command}: cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print(f"rayemb {args.command}: interrupted; nothing half written", file=sys.stderr)
        return EXIT_CANCELLED
    except OSError as exc:
        what = f"{exc.strerror} ({exc.filename})" if exc.strerror and exc.filename else str(exc)
        print(f"rayemb {args.command}: error: {what}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as exc:
        print(f"rayemb {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
