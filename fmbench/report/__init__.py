"""Reports: Markdown (renders on GitHub) and self-contained HTML with plots, for one run or several.

Entry points: `render_report` (one run directory) and `compare_runs` (several runs side by side);
`summary_markdown` and `metrics_table_rows` give short texts for orchestration artifacts.
The package is callable: ``fmbench.report(run_dir)`` is `fmbench.api.report`. Its modules (polars,
plotly) are imported when first used, so that `render_report` starts the PNG browser before them.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # at run time these come from `_CallableReport.__getattr__`, imported when first used
    from fmbench.report.compare import compare_runs  # noqa: TC004
    from fmbench.report.render import ReportPaths  # noqa: TC004
    from fmbench.report.run import RunData, load_run  # noqa: TC004
    from fmbench.report.tables import metrics_table_rows, summary_markdown  # noqa: TC004

__all__ = [
    "ReportPaths",
    "RunData",
    "compare_runs",
    "load_run",
    "metrics_table_rows",
    "render_report",
    "summary_markdown",
]

_LAZY = {"compare_runs": "compare", "ReportPaths": "render", "RunData": "run", "load_run": "run",
         "metrics_table_rows": "tables", "summary_markdown": "tables"}


def render_report(run_url: str, png: bool = True) -> ReportPaths:
    """Render the report of one run directory (local path or s3:// URL).

    Computes metrics.parquet/metrics.csv first when they are absent, then writes plots/*.png,
    report.md and report.html into the run directory.

    ``png=False`` skips the PNGs (no browser is started); report.html keeps its interactive figures.

    Raises:
        StorageError: the run directory cannot be read or written.
        ConfigError: an experiment's pricing cannot be resolved.
    """
    from fmbench.png import PngExporter

    with contextlib.ExitStack() as stack:
        # The browser starts first: Chromium's start overlaps importing the report's modules (over a
        # second, one core) as well as reading and summarising the records.
        exporter = stack.enter_context(PngExporter()) if png else None
        from fmbench.report.render import render_run_report

        return render_run_report(run_url, exporter)


class _CallableReport(types.ModuleType):
    # `fmbench.report` names both this package and the public function; Python sets the package
    # attribute to the subpackage whenever it is imported, so the package answers the call itself.
    def __call__(self, run_dir: Any) -> Any:
        from fmbench.api import report

        return report(run_dir)

    def __getattr__(self, name: str) -> Any:
        if name not in _LAZY:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self.__name__}.{_LAZY[name]}"), name)
        setattr(self, name, value)
        return value


sys.modules[__name__].__class__ = _CallableReport
