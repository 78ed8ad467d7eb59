"""``python -m gpukernels``: the same command as the ``gpukernels`` script."""

from gpukernels.cli import main

raise SystemExit(main())
