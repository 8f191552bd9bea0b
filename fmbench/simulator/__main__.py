"""``python -m fmbench.simulator``: run the simulated endpoint (see `cli`)."""

from __future__ import annotations

import sys

from fmbench.simulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
