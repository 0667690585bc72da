"""`python -m murmura` / `murmura`: the command line (see ``murmura --help``)."""

from __future__ import annotations

from murmura.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
