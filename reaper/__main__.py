"""`python -m reaper` is the same as the `reaper` command."""

from reaper.cli.main import main

raise SystemExit(main())
