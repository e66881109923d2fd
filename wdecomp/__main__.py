"""``python -m wdecomp``: the command line (same as the ``wdecomp`` script)."""

from wdecomp.cli import main

raise SystemExit(main())
