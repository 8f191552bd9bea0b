"""Run all nine benchmarks (`make bench`) and write benchmarks/results/*.json and results.md.

Each benchmark runs as its own ``python -m benchmarks.NAME`` process with a time limit, so one
failing or hanging benchmark costs its own row, not the others. ``--quick`` runs the smoke
versions (about two minutes in all); the full run takes about 10-15 minutes on 2 cores.

Run: ``uv run --no-sync python -m benchmarks.run_all [--quick] [--only NAME ...]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import loadavg, parser

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = {  # name -> (full, quick) time limits in seconds
    "client_overhead": (600, 120),
    "capacity": (420, 120),
    "sim_capacity": (240, 90),
    "orchestration": (600, 300),
    "analysis_scale": (300, 120),
    "long_context": (300, 120),
    "llama_cpp": (600, 180),  # needs the llama-server of .ci/llama-server.sh
    "run_overhead": (900, 600),
    "client_hosts": (600, 240),  # needs the dask extra
}


def run_one(name: str, quick: bool, out: Path) -> dict[str, Any]:
    """Run one benchmark in its own process; returns its JSON result (or the failure)."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out", str(out)] + (["--quick"] if quick else [])
    limit = BENCHMARKS[name][1 if quick else 0]
    t0 = time.monotonic()
    print(f"== {name} (limit {limit} s, load {loadavg()[0]})", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=limit, check=False)
        ok = proc.returncode == 0
        why = None if ok else f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        ok, why = False, f"did not finish within {limit} s"
    wall = time.monotonic() - t0
    path = out / f"{name}.json"
    if ok and path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        data["_wall_s"] = round(wall, 1)
        return data
    print(f"!! {name}: {why}", flush=True)
    return {"benchmark": name, "failed": why, "_wall_s": round(wall, 1)}


def _f(x: Any, fmt: str = "{:,.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _missing(r: dict[str, Any]) -> str:
    return f"Failed: {r['failed']}." if r.get("failed") else "Not run."


def render_markdown(results: dict[str, dict[str, Any]], quick: bool) -> str:
    """The results as markdown tables (one section per benchmark)."""
    lines = [f"# fmbench benchmark results{' (quick run)' if quick else ''}", "",
             (f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `make bench` "
             f"(`python -m benchmarks.run_all{' --quick' if quick else ''}`) on {os.cpu_count()} CPUs. "
             "The machine is shared: each result carries the 1-minute load average when it was measured."), ""]
    measured = [f"{name} {r['created_at'].replace('T', ' ').removesuffix('Z')[:16]}"
                for name, r in results.items() if isinstance(r.get("created_at"), str)]
    if measured:  # a run of some benchmarks only (--only) re-renders the others' earlier results
        lines += [f"Each benchmark's results were measured (UTC): {', '.join(measured)}.", ""]
    r = results.get("client_overhead", {})
    lines += ["## 1. Client overhead (measured - server-stamped true value)", ""]
    if "rows" in r:
        lines += [("| conc | stream | prompt | output | n | TTFT err p50 / p99 ms | e2e err p50 / p99 ms | "
                   "send p50 / p99 ms | delivery p50 / p99 ms | client CPU ms/req | server lateness p99 ms | "
                   "pacer lag p99 ms | fmbench verdict | load |"),
                  "|---:|---|---:|---:|---:|---|---|---|---|---:|---:|---:|---|---:|"]
        valid_ok = valid_n = 0
        for x in r["rows"]:
            # the engine's own verdict (older results: derived from its rule, pacer lag p99 <= 10 ms)
            valid = x.get("valid", x.get("pacer_lag_p99_ms", 0.0) <= 10.0)
            limit = 1.0 if x["concurrency"] <= 64 else 5.0
            if valid:
                valid_n += 1
                valid_ok += max(x["ttft_err_p99_ms"], x["e2e_err_p99_ms"]) <= limit
            lines.append(f"| {x['concurrency']} | {'yes' if x['stream'] else 'no'} | {x['prompt_tokens']} | "
                         f"{x['output_tokens']} | {x['requests']}{' (p99 = max)' if x.get('p99_is_max') else ''} | "
                         f"{x['ttft_err_p50_ms']:.3f} / "
                         f"{x['ttft_err_p99_ms']:.3f} | {x['e2e_err_p50_ms']:.3f} / {x['e2e_err_p99_ms']:.3f} | "
                         f"{x['send_p50_ms']:.3f} / {x['send_p99_ms']:.3f} | {x['delivery_p50_ms']:.3f} / "
                         f"{x['delivery_p99_ms']:.3f} | {x.get('client_cpu_ms_per_req', float('nan')):.2f} | "
                         f"{x['server_late_p99_ms']:.2f} | {x.get('pacer_lag_p99_ms', float('nan')):.2f} | "
                         f"{'valid' if valid else 'invalid'} | {x['load_avg'][0]} |")
        lines += ["", (f"Target ({r['target']}): {r['cells_meeting_target']} of {r['cells']} cells meet it "
                  f"({valid_ok} of the {valid_n} cells fmbench itself judged valid)."), ""]
        if "cells_meeting_target_outside_slow" in r:
            lines += [(f"On each cell's requests that did not overlap a slow window of the machine (a sentinel "
                       f"process's 5-us piece of Python >= 4x slower than usual in a 10-ms window, or within 50 ms "
                       f"after; see fmbench/machine.py): {r['cells_meeting_target_outside_slow']} of "
                       f"{r['cells_outside_slow']} cells meet the target. Per cell, share of the time the machine "
                       f"was slow, requests outside, TTFT / e2e error p99 on them (ms): "
                       + "; ".join(f"c={x['concurrency']} {'S' if x['stream'] else 'J'} {x['prompt_tokens']}/"
                                   f"{x['output_tokens']}: {x['machine_slow_share']:.1%}, "
                                   f"{x['requests_outside_slow']}, {_f(x['ttft_err_p99_outside_slow_ms'], '{:.2f}')}"
                                   f" / {_f(x['e2e_err_p99_outside_slow_ms'], '{:.2f}')}"
                                   for x in r["rows"] if "requests_outside_slow" in x) + "."), ""]
        if "wake_jitter" in r:
            j = r["wake_jitter"]
            lines += [(f"The machine's own floor, before the cells: a 1-ms sleep of an idle process woke late by "
                       f"p50 {j['p50_ms']:.3f}, p99 {j['p99_ms']:.3f}, p99.9 {j['p999_ms']:.3f}, max "
                       f"{j['max_ms']:.3f} ms ({j['wakes']} wakes)."), ""]
        if r.get("tls_rows"):
            lines += [(f"Over https (the simulator serving TLS, the client trusting its certificate through "
                       f"`ca_bundle`; not among the cells above): {r['tls_cells_meeting_target']} of "
                       f"{r['tls_cells']} cells meet the target."), "",
                      "| conc | stream | n | TTFT err p50 / p99 ms | e2e err p50 / p99 ms | receive stamps | load |",
                      "|---:|---|---:|---|---|---|---:|"]
            lines += [f"| {x['concurrency']} | {'yes' if x['stream'] else 'no'} | {x['requests']} | "
                      f"{x['ttft_err_p50_ms']:.3f} / {x['ttft_err_p99_ms']:.3f} | {x['e2e_err_p50_ms']:.3f} / "
                      f"{x['e2e_err_p99_ms']:.3f} | {x.get('receive_stamps')} | {x['load_avg'][0]} |"
                      for x in r["tls_rows"]]
            lines += [""]
    else:
        lines += [_missing(r), ""]
    r = results.get("capacity", {})
    lines += ["## 2. Capacity (one load-generator process vs a bare aiohttp loop, zero-latency server)", ""]
    if "json" in r and "bare_decode_req_s" not in r["json"]:  # a result from before the decoding loop
        lines += ["| answers | engine req/s | bare aiohttp req/s | ratio | engine, 2 processes | load |",
                  "|---|---:|---:|---:|---:|---:|"]
        for key, label in (("json", "JSON"), ("stream", f"SSE, {r['chunks_per_answer']} chunks")):
            x = r[key]
            lines.append(f"| {label} | {x['engine_req_s']:,.0f} | {x['bare_req_s']:,.0f} | {x['ratio']:.2f} | "
                         f"{x['engine_2proc_req_s']:,.0f} | {x['load_avg'][0]} |")
        lines += ["", (f"Measured before the bare loop that decodes with orjson: against one that `json.loads` each "
                       f"event the engine's ratio was {r['stream']['ratio_vs_bare_json_parse']:.2f}. Target "
                       f"({r['target']}): {'met' if r['met'] else 'not met'}."), ""]
    elif "json" in r:
        dec = r.get("json_decoder", "json")
        per_round = "ratio_vs_bare_decode_per_round" in r["json"]
        lines += [(f"| answers | engine req/s | bare aiohttp + {dec} decode | ratio (target"
                   f"{'; median of the rounds' if per_round else ''}) | per round | bare aiohttp, no decode | ratio | "
                   "engine, 2 processes | load |"), "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
        for key, label in (("json", "JSON"), ("stream", f"SSE, {r['chunks_per_answer']} chunks")):
            x = r[key]
            rounds = ", ".join(f"{v:.2f}" for v in x.get("ratio_vs_bare_decode_per_round", [])) or "–"
            lines.append(f"| {label} | {x['engine_req_s']:,.0f} | {x['bare_decode_req_s']:,.0f} | "
                         f"{x['ratio_vs_bare_decode']:.2f} | {rounds} | {x['bare_req_s']:,.0f} | "
                         f"{x['ratio_vs_bare']:.2f} | {x['engine_2proc_req_s']:,.0f} | {x['load_avg'][0]} |")
        s = r["stream"]
        lines += ["", (f"Streamed: engine {s['engine_chunks_s']:,.0f} chunks/s. The target compares like with like: "
                  f"the bare loop that decodes the same JSON (each event's, with {dec}) as the engine must to "
                  "measure tokens; against the loop that decodes nothing it is "
                  f"{'met' if r['met_vs_plain_bare'] else 'not met'}. Open loop: highest valid Poisson rate of one process "
                  f"{r['open_loop']['max_valid_rate']:g} req/s (load {r['open_loop']['load_avg'][0]}). "
                  f"The simulated endpoint at zero latency serves {r['simulator_zero_latency']['json']['req_s']:,.0f} "
                  f"req/s JSON and {r['simulator_zero_latency']['stream']['req_s']:,.0f} streamed "
                  f"(server CPU {r['simulator_zero_latency']['stream']['server_cpu_ms_per_req']:.2f} ms per streamed "
                  f"request). Target ({r['target']}): {'met' if r['met'] else 'not met'}."), ""]
        if "part_us_per_req" in r["json"]:
            names = {"records": "records writer", "kernel_stamps": "kernel receive stamps",
                     "idle_poll": "poll of an idle pooled connection before reuse"}
            parts = []
            for key, label in (("json", "JSON"), ("stream", "streamed")):
                x = r[key]
                gap = x["engine_us_per_req"] - x["bare_decode_us_per_req"]
                each = ", ".join(f"{names.get(k, k)} {v:.1f}" for k, v in x["part_us_per_req"].items())
                rest = gap - sum(x["part_us_per_req"].values())
                part = (f"{label}: engine {x['engine_us_per_req']:.1f}, bare loop with decoding "
                        f"{x['bare_decode_us_per_req']:.1f} (gap {gap:.1f}); of the engine's: {each}; "
                        f"the rest of the gap {rest:.1f}")
                if "part_cpu_us_per_req" in x:  # (results of this benchmark before it measured the CPU)
                    spread = ", ".join(f"{names.get(k, k)} {lo:.1f} to {hi:.1f}"
                                       for k, (lo, hi) in x["part_us_per_req_range"].items())
                    cpu = ", ".join(f"{names.get(k, k)} {v:.1f}" for k, v in x["part_cpu_us_per_req"].items())
                    cpu_gap = x["engine_cpu_us_per_req"] - x["bare_decode_cpu_us_per_req"]
                    part += (f" (per round: {spread}); in the client's CPU time: engine {x['engine_cpu_us_per_req']:.1f}, "
                             f"bare loop with decoding {x['bare_decode_cpu_us_per_req']:.1f} (gap {cpu_gap:.1f}); "
                             f"of the engine's: {cpu}; the rest of the gap "
                             f"{cpu_gap - sum(x['part_cpu_us_per_req'].values()):.1f}")
                parts.append(part)
            lines += [("Where the gap goes (µs of wall time per request, medians over the rounds; each part is the "
                       "engine minus the engine with only that part switched off, in the same rounds; a diagnosis, "
                       "no real run switches any off; on a shared machine both wall time and the client's CPU time per "
                       "request move from round to round by more than a part costs, so the per-round spread is "
                       "given): " + "; ".join(parts) + "."), ""]
    else:
        lines += [_missing(r), ""]
    r = results.get("orchestration", {})
    lines += ["## 3. Orchestration overhead (real Prefect flow, 30 shards)", ""]
    if "flow_wall_s" in r:
        lines += [("| shards | shard length s | flow wall s | sum of shards s | gap between shards p50 / max ms | "
                  "fixed cost s (before first / after last shard) | overhead at 30 s shards | load |"),
                  "|---:|---:|---:|---:|---|---|---:|---:|",
                  (f"| {r['shards_ok']}/{r['shards']} | {r['shard_target_s']} | {r['flow_wall_s']} | {r['shards_sum_s']} | "
                  f"{r['gap_p50_s'] * 1e3:.0f} / {r['gap_max_s'] * 1e3:.0f} | {r['fixed_cost_s']} "
                  f"({r['before_first_shard_s']} / {r['after_last_shard_s']}) | "
                  f"{r['overhead_at_30s_shards_with_fixed']:.2%} | {r['load_avg'][0]} |"), "",
                  (f"Target ({r['target']}): {'met' if r['met'] else 'not met'} (per-shard cost alone: "
                  f"{r['overhead_at_30s_shards']:.2%})."), ""]
    else:
        lines += [_missing(r), ""]
    r = results.get("analysis_scale", {})
    lines += ["## 4. Analysis at scale", ""]
    if "metrics" in r:
        lines += ["| records | step | seconds | peak RSS MB | process wall s (with imports) | load |",
                  "|---:|---|---:|---:|---:|---:|"]
        for step in ("metrics", "report"):
            x = r[step]
            lines.append(f"| {r['records']:,} | {step} | {x['seconds']:.2f} | {x['peak_rss_mb']:.0f} | "
                         f"{x['process_wall_s']:.2f} | {r['load_avg'][0]} |")
        lines += ["", (f"Target ({r['target']}): metrics {'met' if r['met_metrics'] else 'not met'}, full report "
                  f"{'met' if r['met_report'] else 'not met'}."), ""]
    else:
        lines += [_missing(r), ""]
    r = results.get("long_context", {})
    lines += ["## 5. Long context (1,000-token streamed answers, concurrency 64)", ""]
    if "zero" in r:
        z = r["zero"]
        lines += ["| server | prompt tokens | req/s | chunks/s | client CPU us/chunk | TPOT p50 / p99 ms | load |",
                  "|---|---:|---:|---:|---:|---|---:|"]
        for x in (z["short"], z["long"]):
            lines.append(f"| zero-latency | {x['prompt_tokens']:,} | {x['req_s']} | {x['chunks_s']:,.0f} | "
                         f"{x['client_cpu_us_per_chunk']} | - | {x['load_avg'][0]} |")
        if "simulated" in r:
            x = r["simulated"]
            lines.append(f"| simulated, 10 ms/token | {x['prompt_tokens']:,} | {x['req_s']} | {x['chunks_s']:,.0f} | "
                         f"{x['client_cpu_us_per_chunk']} | {x['tpot_p50_ms']} / {x['tpot_p99_ms']} | "
                         f"{x['load_avg'][0]} |")
        lines += ["", f"Long/short chunk rate: {z['long_over_short']:.2f}"
                  + (f"; simulated tokens/s {r['simulated']['tokens_over_ideal']:.0%} of ideal" if "simulated" in r
                     else "") + f". Target ({r['target']}): {'met' if r['met'] else 'not met'}.", ""]
    else:
        lines += [_missing(r), ""]
    r = results.get("llama_cpp", {})
    lines += ["## 6. A real llama.cpp server: fmbench beside a stdlib client, the wire and the server's own timings", ""]
    if "rows" in r:
        lines += [f"Server: {r['server']}.", "",
                  ("| api | conc | n | TTFT ms fmbench / stdlib (server prompt_ms) | TTFT - prompt_ms fmbench / stdlib | "
                   "client - wire, TTFT median (max) ms fmbench / stdlib | TPOT ms fmbench / stdlib (server) | "
                   "client - wire, TPOT median ms fmbench / stdlib | fmbench resends | checks missed | load |"),
                  "|---|---:|---:|---|---|---|---|---|---:|---|---:|"]
        for x in r["rows"]:
            f, s = x["fmbench"], x["stdlib"]
            missed = ", ".join(k.replace("_", " ") for k, ok in x["checks"].items() if not ok) or "none"
            wire_ttft = (f"{f['ttft_minus_wire_ms']:.2f} ({f['ttft_minus_wire_max_ms']:.2f}) / "
                         f"{s['ttft_minus_wire_ms']:.2f} ({s['ttft_minus_wire_max_ms']:.2f})"
                         if "ttft_minus_wire_ms" in f else x.get("wire", {}).get("note", "not captured"))
            wire_tpot = (f"{f['tpot_minus_wire_ms']:.3f} / {s['tpot_minus_wire_ms']:.3f}"
                         if "tpot_minus_wire_ms" in f else "–")
            lines.append(f"| {x['api']} | {x['concurrency']} | {x['requests_per_client']} | "
                         f"{f['ttft_ms']:.1f} / {s['ttft_ms']:.1f} ({f['server_prompt_ms']:.1f} / "
                         f"{s['server_prompt_ms']:.1f}) | {f['ttft_excess_ms']:.2f} / {s['ttft_excess_ms']:.2f} | "
                         f"{wire_ttft} | {f['tpot_ms']:.3f} / {s['tpot_ms']:.3f} ({f['server_tpot_ms']:.3f} / "
                         f"{s['server_tpot_ms']:.3f}) | {wire_tpot} | {f['resends']} | {missed} | "
                         f"{x['load_avg'][0]} |")
        met = sum(x["met"] for x in r["rows"])
        lines += ["", f"Target ({r['target']}): met in {met} of {len(r['rows'])} cells.", ""]
    else:
        lines += [_missing(r), ""]
    r = results.get("run_overhead", {})
    lines += ["## 7. Fixed cost of a run (50 requests, one shard: wall time minus the shard)", ""]
    if "runs" in r:
        lines += ["| run | Prefect API | calibration | wall s | shard s | fixed s | load |", "|---|---|---|---:|---:|---:|---:|"]
        for name, x in r["runs"].items():
            lines.append(f"| {name} | {x['api']} | {'reused' if x['calibration_reused'] else 'measured'} | "
                         f"{x['wall_s']:.1f} | {x['shard_s']:.1f} | {x['fixed_s']:.1f} | {x['load']} |")
        probed = {name: x["breakdown"] for name, x in r["runs"].items() if "breakdown" in x}
        if probed:
            keys = list(dict.fromkeys(k for b in probed.values() for k in b))
            lines += ["", ("Where each run's wall time went (seconds; task ...: the library work inside that Prefect "
                           "task; between tasks: Prefect's task-run bookkeeping and the sequence's own code):"), "",
                      "| phase | " + " | ".join(probed) + " |", "|---|" + "---:|" * len(probed)]
            lines += [f"| {k.removesuffix('_s').replace('_', ' ')} | " + " | ".join(
                f"{b.get(k, 0.0):.2f}" for b in probed.values()) + " |" for k in keys]
        lines += ["", "| part (alone) | seconds |", "|---|---:|"]
        lines += [f"| {k.removesuffix('_s').replace('_', ' ')} | {v} |" for k, v in r["parts"].items()]
        met = r.get("met", {})
        target = (f"Target: fixed ≤ 10 s on a machine that has run fmbench before "
                  f"({'met' if met.get('again') else 'missed'}), ≤ 20 s on a fresh one "
                  f"({'met' if met.get('fresh') else 'missed'}).")
        lines += ["", target, ""]
    else:
        lines += [_missing(r), ""]
    r = results.get("client_hosts", {})
    lines += ["## 8. Client hosts (one shard from 1 vs 2 Dask workers, zero-latency server, c=64)", ""]
    if "ratio" in r:
        one, two = r["one_host"], r["two_hosts"]
        lines += ["| hosts | req/s | requests per host | clock uncertainty ms | load |", "|---:|---:|---|---|---:|"]
        for x in (one, two):
            lines.append(f"| {x['hosts']} | {x['req_s']:,.0f} | {x['per_host']} | {x['clock_uncertainty_ms']} | "
                         f"{x['load_avg'][0]} |")
        lines += ["", (f"Offered load, 2 hosts / 1 host: **{r['ratio']:.2f}** (workers on this one machine share its "
                  "cores with the server: a lower bound for separate machines)."), ""]
    else:
        lines += [_missing(r), ""]
    r = results.get("sim_capacity", {})
    lines += ["## 9. Simulator capacity (paced streams per core at 4 ms/token, closed loop, 250-token streams)", ""]
    if "rows" in r:
        lines += [("| writer | conc | chunks/s | server CPU cores | server CPU us/chunk | of it in the kernel | "
                   "paced streams per core | pacing error p50 / p99 / max ms | client CPU cores | load |"),
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for x in r["rows"]:
            pacing = (f"{x['pacing_p50_ms']} / {x['pacing_p99_ms']} / {x['pacing_max_ms']}" if "pacing_p50_ms" in x
                      else "n/a")  # the bare-loop floor has no server stamps
            lines.append(f"| {x['writer']} | {x['concurrency']} | {x['chunks_s']:,} | "
                         f"{x.get('server_cpu_cores', 'n/a')} | "
                         f"{x['server_cpu_us_per_chunk']} | {x.get('server_kernel_us_per_chunk', 'n/a')} | "
                         f"{_f(x['streams_per_core'], '{:,.0f}')} | {pacing} | "
                         f"{x.get('client_cpu_cores', 'n/a')} | {x['load_avg'][0]} |")
        whose = [x for x in r["rows"] if "late_chunks" in x]
        if whose:
            lines += ["", ("Whose lateness (fmbench/machine.py): a sentinel process timed a ~5-us piece of "
                           "Python every millisecond beside the server; a 10-ms window whose median was >= 4x the "
                           "run's is a slow window of the machine, and a chunk due in one or within 50 ms after it "
                           "counts as in it."), "",
                      ("| writer | conc | machine: unit us (median) | slow windows, share of time (+50 ms) | "
                       "chunks > 1 ms late | of them in slow windows | share > 1 ms late outside them |"),
                      "|---|---:|---:|---|---:|---:|---:|"]
            for x in whose:
                lines.append(f"| {x['writer']} | {x['concurrency']} | {x['machine_unit_us_median']} | "
                             f"{x['machine_slow_share']:.1%} ({x['time_in_slow_windows']:.1%}) | "
                             f"{x['late_chunks']:,} | {x['late_in_slow_windows']:,} | "
                             f"{_f(x['late_share_outside'], '{:.2%}')} |")
        ratios = ", ".join(f"{v:.2f} at c={k}" for k, v in r["streams_per_core_ratio"].items())
        lines += ["", (f"Streams per core, new / old writer: {ratios}. Target ({r['target']}): ratio "
                  f"{'met' if r['met_ratio'] else 'missed'}, pacing {'met' if r['met_pacing'] else 'missed'}.")]
        if r.get("bare_loop_ceiling_ratio"):
            ceil = ", ".join(f"{v:.2f} at c={k}" for k, v in r["bare_loop_ceiling_ratio"].items())
            lines += ["", (f"Old writer / bare-loop floor CPU per chunk (the most any CPython writer with one "
                           f"send per stream per step could gain): {ceil}.")]
        for level, b in (r.get("target_budget") or {}).items():
            lines += ["", (f"At c={level} the target allows {b['allowed_us']} us of server CPU per chunk. The kernel's "
                           f"part of pacing one out (the bare loop's system time: the TCP send, its delivery to "
                           f"the reader, which over loopback the send runs, and the wake-ups of the 0.2-ms steps) "
                           f"is {b['kernel_us']} us, which leaves "
                           f"{b['left_for_user_space_us']} us for everything a server does in user space; the "
                           f"bare CPython loop alone spends {b['bare_loop_user_us']} us there. Old writer / "
                           f"kernel part alone (a writer whose user space cost nothing): "
                           f"{_f(b['kernel_ceiling_ratio'], '{:.2f}')}.")]
        lines += [""]
    else:
        lines += [_missing(r), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, write the JSON files and results.md; exit status 1 if one failed."""
    p = parser(__doc__)
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="Run only these benchmarks.")
    p.add_argument("--render", action="store_true", help="Only re-render results.md from the JSON files.")
    args = p.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    names = [] if args.render else (args.only or list(BENCHMARKS))
    t0 = time.monotonic()
    results = {}
    for name in BENCHMARKS:
        if name in names:
            results[name] = run_one(name, args.quick, out)
        elif (out / f"{name}.json").exists():  # keep the last result of the ones not rerun
            results[name] = json.loads((out / f"{name}.json").read_text())
    md = render_markdown(results, args.quick)
    (out / "results.md").write_text(md)
    print(md)
    print(f"all benchmarks: {time.monotonic() - t0:.0f} s; wrote {out / 'results.md'}")
    return 1 if any("failed" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
