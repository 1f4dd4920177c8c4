"""``python -m streamserve``: the same as the ``streamserve`` command."""

from streamserve.cli import main

raise SystemExit(main())
