"""``python -m fastenv`` is the ``fastenv`` command."""

from fastenv.cli import main

raise SystemExit(main())
