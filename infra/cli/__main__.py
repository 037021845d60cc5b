"""``python -m infra.cli ARGS``: how the tests, the demo and the benchmarks start a command."""

from __future__ import annotations

import sys

from infra.cli import main

if __name__ == "__main__":
    sys.exit(main())
