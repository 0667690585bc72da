"""`python -m murmura` / `murmura`: the command line (a minimal one until the CLI issue lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: murmura demo")
        return 0
    if argv[0] == "demo":
        from murmura.demo import run_demo

        run_demo()
        return 0
    print(f"murmura: unknown command {argv[0]!r}; available: demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
