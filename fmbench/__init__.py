"""fmbench: benchmark foundation-model endpoints for latency, throughput and cost.

The package is a plain library (no Prefect import); `flows/` and `tasks/` wrap it.
"""

from __future__ import annotations

__version__ = "0.1.0"
