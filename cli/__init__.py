"""The `fmbench` command line, at the edge: it depends on the library and the Prefect app, never the reverse.

`cli.main.main` is the ``fmbench`` console script; ``python -m fmbench`` and ``python -m cli`` run it too.
"""

from __future__ import annotations
