"""Reports: Markdown (renders on GitHub) and self-contained HTML with plots, for one run or several.

Entry points: `render_report` (one run directory) and `compare_runs` (several runs side by side);
`summary_markdown` and `metrics_table_rows` give short texts for orchestration artifacts.
"""

from __future__ import annotations

from fmbench.report.compare import compare_runs
from fmbench.report.render import ReportPaths, render_report
from fmbench.report.run import RunData, load_run
from fmbench.report.tables import metrics_table_rows, summary_markdown

__all__ = [
    "ReportPaths",
    "RunData",
    "compare_runs",
    "load_run",
    "metrics_table_rows",
    "render_report",
    "summary_markdown",
]
