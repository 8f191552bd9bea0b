"""``python -m fmbench.endpoints.simulated``: run the simulated endpoint (see `cli`)."""

from __future__ import annotations

import sys

from fmbench.endpoints.simulated.cli import main

if __name__ == "__main__":
    sys.exit(main())
