"""The public API (`import fmbench`): configs from every kind of source, and whole runs in a plain
script and inside a running event loop (as in a Jupyter kernel), against the simulated endpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

import fmbench


def _raw(tmp_path: Path, name: str = "apitest", ttft_ms: int = 30) -> dict[str, Any]:
    return {
        "name": name,
        "output": str(tmp_path / "results"),
        "buckets": [[1, 200]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 4, "seed": 1}],
        "experiments": [{
            "name": "sim",
            "endpoint": {"provider": "simulated", "ttft_ms": ttft_ms, "tpot_ms": 2, "output_tokens": 8,
                         "max_batch": 8},
            "inference": {"max_tokens": 8, "stream": True},
            "concurrency_levels": [1, 2],
            "requests_per_level": 6,
            "warmup_requests": 1,
            "pricing": {"hourly_usd": 1.0},
        }],
    }


def test_load_config_takes_a_path_text_mapping_or_model_and_narrows_it(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(raw))
    from_path = fmbench.load_config(path, overrides=["experiments.0.requests_per_level=3"])
    assert from_path.experiments[0].requests_per_level == 3
    assert fmbench.load_config(path.read_text()).name == "apitest"
    from_map = fmbench.load_config(raw, concurrency_levels=[4, 8])
    assert isinstance(from_map, fmbench.BenchmarkConfig)
    assert from_map.experiments[0].concurrency_levels == [4, 8]
    assert from_map.base_dir == str(Path.cwd())
    again = fmbench.load_config(from_map, requests_per_level=2)
    assert again.experiments[0].requests_per_level == 2 and again.experiments[0].concurrency_levels == [4, 8]
    assert raw["experiments"][0]["concurrency_levels"] == [1, 2]  # the caller's mapping is left alone
    with pytest.raises(fmbench.ConfigError, match=r"^<config>: experiments\[0\]\.concurrency_levels\[0\]: "):
        fmbench.load_config({**raw, "experiments": [{**raw["experiments"][0], "concurrency_levels": [0]}]})


def test_load_config_checks_what_a_run_would_check_first(tmp_path: Path) -> None:
    """The library loads a config the way `fmbench run` does: an unknown tokenizer is refused at
    load time, naming the field, not when the run reaches it."""
    raw = {**_raw(tmp_path), "tokenizer": "no_such_encoding"}
    with pytest.raises(fmbench.ConfigError, match="no_such_encoding"):
        fmbench.load_config(raw)
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(fmbench.ConfigError, match=rf"^{path}: .*no_such_encoding"):
        fmbench.load_config(path)


def _check_result(result: fmbench.BenchmarkResult) -> None:
    assert isinstance(result.metrics, pl.DataFrame)
    assert sorted(result.metrics["concurrency"].to_list()) == [1, 2]
    assert Path(result.report).is_file() and result.report.endswith("report.md")
    assert Path(result.report_html).is_file()
    assert "<table>" in result._repr_html_() and result.run_id in result._repr_html_()
    figures = result.figures()
    fig = figures["latency_p95_vs_load"]
    bundle = fig._repr_mimebundle_({}, {}) if hasattr(fig, "_repr_mimebundle_") else {}
    assert bundle or fig._repr_html_()  # displays inline in a notebook
    assert result.requests().filter(~pl.col("warmup")).height == 12


@pytest.mark.integration
def test_run_benchmark_in_a_plain_script(tmp_path: Path) -> None:
    result = fmbench.run_benchmark(_raw(tmp_path), progress=False)
    _check_result(result)
    assert result.regressions is not None and result.regressions.status == "no-previous"


@pytest.mark.integration
def test_run_report_and_compare_inside_a_running_event_loop(tmp_path: Path) -> None:
    async def in_a_kernel() -> tuple[fmbench.BenchmarkResult, fmbench.BenchmarkResult, Any]:
        asyncio.get_running_loop()  # as in a Jupyter cell: a loop runs in this thread
        first = fmbench.run_benchmark(_raw(tmp_path), progress=False)
        second = fmbench.run_benchmark(_raw(tmp_path, ttft_ms=60), progress=False)
        again = fmbench.report(first.run_dir)
        both = fmbench.compare([first, second], tmp_path / "cmp")
        return first, again, both

    first, again, both = asyncio.run(in_a_kernel())
    _check_result(first)
    assert again.run_dir == first.run_dir and Path(again.report).is_file()
    assert Path(both.markdown).is_file() and Path(both.html).is_file()
    assert first.run_id in Path(both.markdown).read_text()


def test_report_is_both_the_package_and_the_function() -> None:
    import fmbench.report as package
    from fmbench.report import render_report

    assert fmbench.report is package and callable(fmbench.report) and callable(render_report)
    assert {"run_benchmark", "load_config", "compare", "report"} <= set(fmbench.__all__)  # pinned in
    # tests/test_exported_members.py
