"""`python -m fmbench` runs the command line."""

from __future__ import annotations

import sys

from fmbench.cli import main

sys.exit(main())
