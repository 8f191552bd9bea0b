"""The example notebook, executed end to end by a real Jupyter kernel (nbclient + ipykernel), as a
user would run it: a running event loop in the kernel, figures displayed inline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _outputs(cell: Any) -> list[dict[str, Any]]:
    return [dict(o) for o in cell.get("outputs", [])]


@pytest.mark.integration
def test_quickstart_notebook_runs_in_a_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("FMBENCH_OUTPUT", str(tmp_path / "results"))
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=540, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in _outputs(c) if o.get("output_type") == "error"]
    assert not errors, errors

    def data(i: int) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for o in _outputs(code[i]):
            found.update(o.get("data", {}))
        return found

    assert "sim-small" in data(0)["text/plain"]
    shown = data(1)["text/html"]  # the BenchmarkResult's own display: run id, report link, metrics table
    assert "fmbench run" in shown and "<table>" in shown and "report.html" in shown
    assert "shape: (12, 7)" in data(2)["text/plain"]  # 2 experiments x 3 buckets x 2 levels, polars
    fig = data(3)
    assert "application/vnd.plotly.v1+json" in fig or "plotly" in fig.get("text/html", ""), list(fig)
    printed = "".join(o.get("text", "") for o in _outputs(code[4]))
    report_md = Path(printed.splitlines()[0])
    assert report_md.is_file() and str(report_md).startswith(str(tmp_path / "results" / "quickstart"))
    compared = data(5)["text/html"]
    assert "report" in compared
    comparison = tmp_path / "results" / "comparison" / "report.md"
    assert comparison.is_file()
    runs = sorted(p.name for p in (tmp_path / "results" / "quickstart").iterdir())
    assert len(runs) == 2 and all(r in comparison.read_text() for r in runs)
    json.dumps(nb)  # the executed notebook is still a valid document
