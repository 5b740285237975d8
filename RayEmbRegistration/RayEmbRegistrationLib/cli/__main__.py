"""``python -m RayEmbRegistrationLib.cli``: the same as the ``rayemb`` command."""

from . import main

raise SystemExit(main())
