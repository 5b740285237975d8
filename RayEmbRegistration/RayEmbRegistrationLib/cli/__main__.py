"""``python -m RayEmbRegistrationLib.cli``: the same as the ``rayemb`` command."""

from . import main

if __name__ == "__main__":  # (a render process started by spawn imports this module too)
    raise SystemExit(main())
