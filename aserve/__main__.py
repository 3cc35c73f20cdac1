"""`python -m aserve` runs the command line."""

from aserve.cli import main

raise SystemExit(main())
