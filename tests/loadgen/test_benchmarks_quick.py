"""Smoke runs of two `make bench` benchmarks (``--quick``), so the scripts do not rot.

They assert that the benchmarks run end to end and report what they promise, never a speed:
speed is what the benchmarks themselves report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT


def _run(name: str, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(out)], cwd=ROOT,
                   check=True, timeout=240, capture_output=True)
    return json.loads((out / f"{name}.json").read_text())


def test_client_overhead_quick_separates_client_from_server(tmp_path: Path) -> None:
    data = _run("client_overhead", tmp_path)
    assert data["cells"] == len(data["rows"]) == 4
    for row in data["rows"]:
        assert row["errors"] == 0 and row["requests"] >= 20 and len(row["load_avg"]) == 3
        # the error is what the client adds on top of the server's own stamps: never negative
        # beyond clock resolution, and made of its send and delivery parts
        assert row["ttft_err_p50_ms"] > -0.01 and row["server_late_p99_ms"] >= 0
        assert row["send_p50_ms"] >= 0 and row["delivery_p50_ms"] >= 0
        # the requests that ran while the machine itself was slow are set aside in a second verdict
        assert 0 <= row["requests_outside_slow"] <= row["requests"] and 0 <= row["machine_slow_share"] <= 1
    assert data["cells_outside_slow"] <= data["cells"]
    assert 0 <= data["cells_meeting_target_outside_slow"] <= data["cells_outside_slow"]
    jitter = data["wake_jitter"]  # the machine's own floor, measured before the cells
    assert jitter["wakes"] > 0 and 0 <= jitter["p50_ms"] <= jitter["p99_ms"] <= jitter["max_ms"]
    # the https cells: the simulator over TLS, every client connection stamped by the kernel
    assert data["tls_cells"] == len(data["tls_rows"]) == 2 and 0 <= data["tls_cells_meeting_target"] <= 2
    for row in data["tls_rows"]:
        assert row["tls"] and row["errors"] == 0 and row["ttft_err_p50_ms"] > -0.01
        assert row["receive_stamps"]["event_loop"] == 0 and row["receive_stamps"]["kernel"] > 0
    assert not any(row["tls"] for row in data["rows"])
    sys.path.insert(0, str(ROOT))
    from benchmarks.run_all import render_markdown

    assert "Over https" in render_markdown({"client_overhead": data}, quick=True)


def test_long_context_quick_and_the_results_table(tmp_path: Path) -> None:
    data = _run("long_context", tmp_path)
    assert data["zero"]["short"]["errors"] == data["zero"]["long"]["errors"] == 0
    assert data["zero"]["long"]["prompt_tokens"] == 32_000 and data["zero"]["long_over_short"] > 0
    sys.path.insert(0, str(ROOT))
    from benchmarks.run_all import render_markdown

    md = render_markdown({"long_context": data}, quick=True)
    assert "32,000" in md and "## 5. Long context" in md and "Not run." in md  # the others


def test_sim_capacity_quick_compares_both_writers_from_server_stamps(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "benchmarks.sim_capacity", "--quick", "--concurrency", "8",
                    "--output-tokens", "20", "--out", str(tmp_path)], cwd=ROOT, check=True, timeout=240,
                   capture_output=True)
    data = json.loads((tmp_path / "sim_capacity.json").read_text())
    rows = data["rows"]
    assert [(r["writer"], r["concurrency"]) for r in rows] == [
        ("per-stream", 8), ("batched", 8), ("asyncio-loop", 8), ("bare-loop", 8)]
    for row in rows[:2]:
        assert row["errors"] == 0 and row["chunks_s"] > 0 and row["pacing_chunks"] > 0
        assert row["pacing_p50_ms"] >= 0  # the server never sends a chunk before it is due
    assert all(r["chunks_s"] > 0 and r["server_cpu_us_per_chunk"] > 0 for r in rows[2:])
    assert set(data["streams_per_core_ratio"]) <= {"8"} and isinstance(data["met"], bool)
    assert set(data["bare_loop_ceiling_ratio"]) == {"8"}
    # The kernel's part of each path's CPU per chunk (system time; a short window is a few clock ticks of
    # CPU, so either part may read 0), and what the 4x target leaves for user space once the bare loop's
    # kernel part is paid.
    assert all(0 <= r["server_kernel_us_per_chunk"] <= r["server_cpu_us_per_chunk"] for r in rows)
    budget = data["target_budget"]["8"]
    assert budget["allowed_us"] == pytest.approx(rows[0]["server_cpu_us_per_chunk"] / 4, abs=0.01)
    assert budget["kernel_us"] == rows[3]["server_kernel_us_per_chunk"]
    assert budget["left_for_user_space_us"] == pytest.approx(budget["allowed_us"] - budget["kernel_us"], abs=0.01)
    for row in rows[:2]:  # whose lateness: the machine's slow windows beside the server's late chunks
        assert row["machine_unit_us_median"] > 0 and 0 <= row["machine_slow_share"] <= 1
        assert 0 <= row["late_in_slow_windows"] <= row["late_chunks"]
    sys.path.insert(0, str(ROOT))
    from benchmarks.run_all import render_markdown

    md = render_markdown({"sim_capacity": data}, quick=True)
    assert "Whose lateness" in md and "of it in the kernel" in md
    assert f"At c=8 the target allows {budget['allowed_us']} us" in md
    # results.md says when each benchmark's results were measured (a run of some re-renders the others')
    assert f"sim_capacity {data['created_at'][:10]}" in md


def test_late_chunks_are_put_in_or_outside_the_machines_slow_windows() -> None:
    sys.path.insert(0, str(ROOT))
    from fmbench.machine import RECOVERY_S, attribute, slow_windows

    # 10-ms bins of a sentinel's median time per unit: bins 2 and 3 ran 5-6x slower than usual.
    speed = slow_windows(100.0, 0.01, [[0, 5.0], [1, 5.2], [2, 30.0], [3, 25.0], [4, 4.9], [5, 5.1]])
    assert speed["windows"] == [[pytest.approx(100.02), pytest.approx(100.04)]]
    assert speed["slow_share"] == pytest.approx(2 / 6, abs=1e-4)
    # 1,000 chunks over one second; three late ones: two due in the window or its recovery, one not.
    late = [[100.03, 12.0], [100.04 + RECOVERY_S / 2, 3.0], [100.5, 2.0]]
    where = attribute(late, 1000, (100.0, 101.0), speed["windows"])
    assert where["late_chunks"] == 3 and where["late_in_slow_windows"] == 2
    covered = 0.02 + RECOVERY_S
    assert where["time_in_slow_windows"] == pytest.approx(covered, abs=1e-4)
    assert where["late_share_outside"] == pytest.approx(1 / (1000 * (1 - covered)), abs=1e-4)


def test_capacity_quick_says_where_the_engines_time_goes(tmp_path: Path) -> None:
    data = _run("capacity", tmp_path)
    sys.path.insert(0, str(ROOT))
    from benchmarks.capacity import ABLATIONS, _without
    from benchmarks.run_all import render_markdown
    from fmbench.endpoints import openai as openai_client
    from fmbench.loadgen.writer import RecordWriter

    for key in ("json", "stream"):
        x = data[key]
        assert x["engine_req_s"] > 0 and x["bare_decode_req_s"] > 0 and x["engine_us_per_req"] > 0
        # every part measured, as a number of microseconds (its sign is the machine's noise in one round)
        assert set(x["part_us_per_req"]) == set(ABLATIONS)
        assert all(isinstance(v, float | int) for v in x["part_us_per_req"].values())
        # and in the client's CPU time, with the wall-time parts' spread over the rounds beside them
        assert x["engine_cpu_us_per_req"] > 0 and x["bare_decode_cpu_us_per_req"] > 0
        assert set(x["part_cpu_us_per_req"]) == set(ABLATIONS)
        assert all(lo <= x["part_us_per_req"][k] <= hi for k, (lo, hi) in x["part_us_per_req_range"].items())
    md = render_markdown({"capacity": data}, quick=True)
    assert "Where the gap goes" in md and "kernel receive stamps" in md and "records writer" in md
    assert "in the client's CPU time" in md
    # the ablation patches only inside its block: the benchmark process's engine is whole after it
    before = (RecordWriter.add_row, openai_client.stamp_reads, openai_client._SendStampingHandler.is_connected)
    for part in ABLATIONS:
        with _without(part):
            patched = (RecordWriter.add_row, openai_client.stamp_reads,
                       openai_client._SendStampingHandler.is_connected)
            assert patched != before
    assert (RecordWriter.add_row, openai_client.stamp_reads,
            openai_client._SendStampingHandler.is_connected) == before
