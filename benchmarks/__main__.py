"""``python -m benchmarks`` from the repository root: the benchmark suite (``make bench``)."""

from benchmarks.runner import main

raise SystemExit(main())
