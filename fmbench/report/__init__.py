"""Reports: Markdown (renders on GitHub) and self-contained HTML with plots, for one run or several.

Entry points: `render_report` (one run directory) and `compare_runs` (several runs side by side);
`summary_markdown` and `metrics_table_rows` give short texts for orchestration artifacts.
The package is callable: ``fmbench.report(run_dir)`` is `fmbench.api.report`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

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


class _CallableReport(types.ModuleType):
    # `fmbench.report` names both this package and the public function; Python sets the package
    # attribute to the subpackage whenever it is imported, so the package answers the call itself.
    def __call__(self, run_dir: Any) -> Any:
        from fmbench.api import report

        return report(run_dir)


sys.modules[__name__].__class__ = _CallableReport
