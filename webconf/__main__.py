"""`python -m webconf`: the `webconf` command."""

from webconf.cli import main

raise SystemExit(main())
