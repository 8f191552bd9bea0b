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
        # A browser a report needs starts first: Chromium's start overlaps importing the report's
        # modules (over a second, one core) as well as reading and summarising the records. Most
        # reports need none (Pillow draws their PNGs), and Chromium's start would take CPU from them.
        exporter = stack.enter_context(PngExporter()) if png and _needs_browser(run_url) else None
        from fmbench.report.render import render_run_report

        return render_run_report(run_url, exporter, png)


def _needs_browser(run_url: str) -> bool:
    """Whether the run's report has PNGs only a browser draws (a cheap look at a few files, before the
    report's imports): the endpoint timeline, answer quality, the regression check's trend plots.
    When in doubt (a remote run directory: its storage layer imports polars), yes; a browser the
    report turns out to need is started then, only later."""
    import json
    from pathlib import Path

    if "://" in run_url:
        return True
    root = Path(run_url)

    def read(name: str) -> str:
        return (root / name).read_text() if (root / name).is_file() else ""

    try:
        manifest = json.loads(read("manifest.json") or "{}")
        regression = json.loads(read("regression.json") or "{}")
        config = read("config.yml")
    except (ValueError, OSError):
        return True
    endpoints = manifest.get("endpoints") if isinstance(manifest, dict) else None
    if isinstance(endpoints, dict) and any(isinstance(t, dict) and t.get("created_at") for t in endpoints.values()):
        return True
    if "evaluation" in config or (root / "evaluation").exists():
        return True
    return (isinstance(regression, dict) and len(regression.get("trend_runs") or []) >= 2
            and not regression.get("plots") and not regression.get("plot_error"))


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
