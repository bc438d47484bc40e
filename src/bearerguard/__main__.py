"""``python -m bearerguard``: the same command line as ``bearerguard``."""

from .cli import main

raise SystemExit(main())
